"""A request waiting for the store's writer: a push of `Deltas` or a revocation, answered once durable."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from fedrecon.proto.payloads import Deltas, PushAck
from fedrecon.server.durable import content_digest


@dataclass
class Pending:
    """A submitted request: `wait()` returns its answer once it is durable (or raises its refusal)."""

    kind: str  # "push" | "revoke"
    client_id: str
    space: str = ""
    seq: int = 0
    deltas: Deltas | None = None  # a push's content (means in their wire dtype, widened to float32 at least)
    actor: str = ""
    after: Pending | None = None  # the previous push of the same stream: if it was refused, so is this one
    digest: str = ""  # content digest (`content_digest`), only where a retry may be checked against it
    nbytes: int = 0  # memory the queued push holds (counted against `Limits.max_queued_bytes`)
    packed: tuple[str, bytes, bytes] | None = None  # log encoding: computed once, by the writer
    sums: np.ndarray | None = None  # float64 count * mean: computed once, by the writer
    done: threading.Event = field(default_factory=threading.Event)
    result: PushAck | None = None
    error: Exception | None = None

    def content_digest(self) -> str:
        """The digest of this push's content (computed on first use: most pushes never need theirs)."""
        if not self.digest:
            assert self.packed is not None
            self.digest = content_digest(self.space, self.packed)
        return self.digest

    def answered(self) -> None:
        """Mark the request answered and drop what its caller does not need (a long stream's pushes add up)."""
        self.after = self.deltas = self.sums = self.packed = None
        self.done.set()

    def wait(self, timeout: float | None = None) -> PushAck:
        """The acknowledgement once durable; raises the refusal (a StoreError) instead."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"push {self.seq} of {self.client_id!r} not answered within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
