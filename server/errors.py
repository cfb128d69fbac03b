"""The store's refusals (each maps to a gRPC status in `service`) and the records it keeps of each client."""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """Base of the store's refusals; the server maps each subclass to a gRPC status."""


class InvalidRequest(StoreError):
    """A request breaks a rule of the store (a limit, an empty or over-long name)."""


class InvalidPush(InvalidRequest):
    """The push breaks a rule of the store (dim of the space, empty push, bad values, a limit)."""


class SequenceGap(StoreError):
    """The push's sequence number is not the next one for its client."""

    def __init__(self, client_id: str, got: int, expected: int) -> None:
        super().__init__(f"client {client_id!r} sent seq {got}; expected seq {expected}")
        self.expected = expected


class SeqReused(StoreError):
    """The push repeats the client's last seq with other content: refused, so nothing acknowledged is overwritten."""

    def __init__(self, client_id: str, seq: int, expected: int) -> None:
        super().__init__(f"client {client_id!r} already used seq {seq} for a push with different content; "
                         f"this push was not applied (the next seq is {expected})")
        self.expected = expected


class EarlierPushRefused(StoreError):
    """A push of a stream whose earlier push was refused: never merged, so its number may be used again."""

    def __init__(self, client_id: str, seq: int, expected: int) -> None:
        super().__init__(f"push {seq} of {client_id!r} follows a refused push on the same stream; not applied")
        self.expected = expected


class VersionAhead(StoreError):
    """A pull names a version this store never reached (a different or reset store)."""


class UnknownClient(StoreError):
    """An administrative operation names a client that never pushed."""


class StoreUnavailable(StoreError):
    """The store is closing, or could not make a push durable."""


class QuotaExceeded(StoreError):
    """A push would take a space or a client past its class quota (`Limits`); permanent for that content."""


class StoreBusy(StoreError):
    """Too many bytes of pushes wait to be written: retry after `retry_after` seconds (nothing was queued)."""

    def __init__(self, message: str, retry_after: float = 0.5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def with_digest(error: SequenceGap | SeqReused | EarlierPushRefused, last_digest: str) -> StoreError:
    """A seq refusal carrying the digest of the client's last merged push (the client reconciles by content)."""
    error.last_digest = last_digest
    return error


@dataclass(frozen=True)
class ClientStats:
    """What the Admin service reports of a client: last seq, live classes, examples."""

    client_id: str
    last_seq: int
    classes: int
    examples: int


@dataclass(frozen=True)
class ClientRecord:
    """A client's last applied sequence number, the answer it got and its content digest, for exactly-once retries."""

    last_seq: int = 0
    last_version: int = 0
    last_classes: int = 0
    last_digest: str = ""  # empty for a record written before digests were kept: such a retry is not checked
