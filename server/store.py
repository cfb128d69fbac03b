"""The durable prototype store: exactly-once, all-or-nothing merges of per-class deltas.

State lives in memory (one `PrototypeTable` per space, one per client and space, per-client
sequence records) and is made durable by a `Log` (SQLite or PostgreSQL): pushes queue up, a writer thread validates
a batch against the state, appends it to the log in one transaction, and only after the commit
applies it to memory and acknowledges each push (group commit). Pulls read memory under a lock,
so they never see an unacknowledged push. With `path=None` the store is in-memory only (tests,
simulation); the validation and merge math are the same.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedrecon.proto.codec import MAX_COUNT
from fedrecon.proto.payloads import PushAck, Snapshot
from fedrecon.proto.prototypes import PrototypeTable, sums_of
from fedrecon.server.durable import (
    DatabaseDamaged,
    DatabaseError,
    LogBehind,
    Operation,
    TableRow,
    content_digest,
    pack_operation,
)
from fedrecon.server.follow import Follower, Following, token_version
from fedrecon.server.log import Log, location, open_log
from fedrecon.server.paging import REPLY_OVERHEAD, ROW_OVERHEAD, BadPageToken, Cursor, page_rows

log = logging.getLogger("fedrecon.store")

MAX_ABS_SUM = 1e30  # refuse deltas whose count * mean could overflow float64 sums over time
MAX_SPACE_EXAMPLES = 2**62  # total count of a space: every per-class, per-client and per-space sum fits int64/uint64


class StoreError(Exception):
    """Base of the store's refusals; the server maps each subclass to a gRPC status."""


class InvalidRequest(StoreError):
    """A request breaks a rule of the store (a limit, an empty or over-long name)."""


class InvalidPush(InvalidRequest):
    """The push breaks a rule of the store (dim of the space, empty push, bad values, a limit)."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits. The store checks the push limits itself, so gRPC, Flower and in-process callers
    get the same rules; the server adds the transport ones (message size, watch streams)."""

    max_classes_per_push: int = 65_536
    max_message_bytes: int = 64 * 1024 * 1024
    max_class_id_bytes: int = 256
    max_dim: int = 16_384
    max_watch_streams: int = 8
    max_reply_bytes: int = 1024 * 1024  # page budget of pulls and watches: well under gRPC's default 4 MiB
    max_stream_window: int = 64  # unanswered pushes one PushStream call may have in flight
    max_stream_window_bytes: int = 16 * 1024 * 1024  # and their wire bytes (besides one push of any size)
    max_push_streams: int = 8  # PushStream calls at once (each holds a thread while open)
    stream_idle_seconds: float = 60.0  # a PushStream with no push for this long is closed
    max_queued_bytes: int = 256 * 1024 * 1024  # pushes waiting for the writer, all calls together
    max_space_classes: int = 2_000_000  # classes one space may hold (0: no quota); each costs ~16 * dim bytes
    max_client_classes: int = 1_000_000  # classes one client may contribute to in one space (0: no quota)

    def check_text(self, name: str, value: str) -> None:
        """Refuse an empty name, one with a NUL or one longer than `max_class_id_bytes` (UTF-8) with InvalidPush."""
        if not value:
            raise InvalidPush(f"{name} must not be empty")
        if "\x00" in value:  # PostgreSQL text cannot hold NUL: refused on every backend, so they agree
            raise InvalidPush(f"{name} must not contain NUL characters")
        if len(value) * 4 > self.max_class_id_bytes and len(value.encode()) > self.max_class_id_bytes:
            raise InvalidPush(f"{name} is longer than {self.max_class_id_bytes} bytes (UTF-8)")


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


class EarlierPushRefused(StoreError):
    """A push of a stream whose earlier push was refused: never merged, so its number may be used again."""

    def __init__(self, client_id: str, seq: int, expected: int) -> None:
        super().__init__(f"push {seq} of {client_id!r} follows a refused push on the same stream; not applied")
        self.expected = expected


def with_digest(error: SequenceGap | SeqReused | EarlierPushRefused, last_digest: str) -> StoreError:
    """A seq refusal carrying the digest of the client's last merged push (the client reconciles by content)."""
    error.last_digest = last_digest
    return error


@dataclass
class Pending:
    """A submitted request: `wait()` returns its answer once it is durable (or raises its refusal)."""

    kind: str
    client_id: str
    space: str = ""
    seq: int = 0
    class_ids: list[str] = field(default_factory=list)
    counts: np.ndarray | None = None
    means: np.ndarray | None = None
    actor: str = ""
    after: Pending | None = None  # the previous push of the same stream: if it was refused, so is this one
    digest: str = ""  # content digest (`content_digest`), only where a retry may be checked against it
    nbytes: int = 0  # memory the queued push holds (counted against `Limits.max_queued_bytes`)
    packed: tuple[str, bytes, bytes] | None = None  # log encoding and sums: computed once, by the writer
    sums: np.ndarray | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: PushAck | None = None
    error: Exception | None = None

    def content_digest(self) -> str:
        """The digest of this push's content (computed on first use: most pushes never need theirs)."""
        if not self.digest:
            assert self.packed is not None
            self.digest = content_digest(self.space, self.packed)
        return self.digest

    def wait(self, timeout: float | None = None) -> PushAck:
        """The acknowledgement once durable; raises the refusal (a StoreError) instead."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"push {self.seq} of {self.client_id!r} not answered within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass
class _Stage:
    """What a batch would change, validated before anything is written or applied."""

    version: int
    ops: list[Operation] = field(default_factory=list)
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    new_spaces: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)  # examples the batch adds per space (for the bound)
    pushes: dict[str, Pending] = field(default_factory=dict)  # each client's last push staged so far
    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (client or "", space): rows it may add


def last_digest(client_id: str, record: ClientRecord, stage: _Stage) -> str:
    """The content digest of the client's last merged push: staged in this batch, or in its record."""
    earlier = stage.pushes.get(client_id)
    return earlier.content_digest() if earlier is not None else record.last_digest


def check_content(class_ids: list[str], counts: np.ndarray, means: np.ndarray, limits: Limits) -> None:
    """The rules of a push's ids and shapes, whatever the store holds (InvalidPush otherwise); its counts and
    the values of its means are checked by `check_values`, for a whole batch at once."""
    n = len(class_ids)
    if n == 0:
        raise InvalidPush("a push needs at least one class")
    if n > limits.max_classes_per_push:
        raise InvalidPush(f"{n} classes in one push; the limit is {limits.max_classes_per_push}")
    if means.ndim != 2 or means.shape[0] != n or counts.shape != (n,):
        raise InvalidPush(f"{n} class_ids need {n} counts and {n} mean rows")
    if means.shape[1] > limits.max_dim:
        raise InvalidPush(f"dim {means.shape[1]} exceeds the limit {limits.max_dim}")
    if set(map(type, class_ids)) != {str} and not all(isinstance(c, str) for c in class_ids):  # C-level first
        raise InvalidPush(f"class_id {next(c for c in class_ids if not isinstance(c, str))!r} is not a string")
    lengths = list(map(len, class_ids))
    # UTF-8 is at most 4 bytes a character; one scan of the joined ids finds a NUL
    if min(lengths) == 0 or max(lengths) * 4 > limits.max_class_id_bytes or "\x00" in "".join(class_ids):
        for class_id in class_ids:
            limits.check_text("class_id", class_id)
    if len(set(class_ids)) != n:
        raise InvalidPush("a class_id appears more than once in one push")


def check_counts(class_ids: list[str], counts: np.ndarray) -> None:
    """Each count of a push in 1..MAX_COUNT (InvalidPush naming the class otherwise)."""
    if counts.min() <= 0:  # a wire count of 2**63 or more reads as negative here
        bad = int(np.argmin(counts))
        raise InvalidPush(f"count of class {class_ids[bad]!r} is {counts[bad]}; each count must be >= 1 and "
                          f"<= {MAX_COUNT}")
    if counts.max() > MAX_COUNT:
        raise InvalidPush(f"counts must be <= {MAX_COUNT}")


def check_values(requests: list[Pending]) -> None:
    """The counts and the float64 sums `count * mean` of several pushes of one dim, with the refusal of any
    whose counts are out of range or whose means are not finite or too large.

    A few whole-batch numpy calls, not several per push: on a busy server each call is a chance to lose the
    GIL to another thread. The common case is settled by bounds of the whole batch; only a batch that fails
    them is checked push by push, to refuse exactly the pushes at fault."""
    counts = np.concatenate([r.counts for r in requests]) if len(requests) > 1 else requests[0].counts
    top_count = int(counts.max())
    if counts.min() <= 0 or top_count > MAX_COUNT:  # rare: refuse the pushes at fault, check the rest
        for request in requests:
            try:
                check_counts(request.class_ids, request.counts)
            except InvalidPush as error:
                request.error = error
        if kept := [r for r in requests if r.error is None]:
            check_values(kept)
        return
    means = np.concatenate([r.means for r in requests]) if len(requests) > 1 else requests[0].means
    with np.errstate(over="ignore", invalid="ignore"):
        sums = np.multiply(means, counts[:, None], dtype=np.float64)
        # |count * mean| <= max count * max |mean| (float64 products of exact values round monotonically);
        # NaN propagates through max and min and fails the comparison
        if float(np.maximum(means.max(), -means.min())) * top_count <= MAX_ABS_SUM:
            largest = [0.0] * len(requests)
        else:
            starts = np.cumsum([0] + [len(r.class_ids) for r in requests[:-1]])
            top_mean = np.maximum(means.max(axis=1), -means.min(axis=1)).astype(np.float64)
            largest = np.maximum.reduceat(top_mean * counts, starts).tolist()
    start = 0
    for request, top in zip(requests, largest, strict=True):
        if top <= MAX_ABS_SUM:
            request.sums = sums[start:start + len(request.class_ids)]
        elif np.isfinite(top):
            request.error = InvalidPush(f"|count * mean| must be <= {MAX_ABS_SUM:g} (means must be finite and "
                                        "bounded)")
        else:
            request.error = InvalidPush("means hold NaN or Inf; every mean must be finite")
        start += len(request.class_ids)


class PrototypeStore(Following):
    """Per-space merged prototypes plus per-client contributions, durable in a `Log` or in memory; on a
    shared log it follows what the other replicas commit (`Following`)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        synchronous: str = "FULL",
        checkpoint_every: int = 20_000,
        checkpoint_seconds: float = 30.0,
        max_batch: int = 1024,
        limits: Limits | None = None,
        repair: bool = False,
    ) -> None:
        self.path = None if path is None else location(path)  # the SQLite file, or the URL without password
        self.limits = limits or Limits()
        self.examples: dict[str, int] = {}  # exact total count per space (Python ints)
        self.version = 0
        self.spaces: dict[str, PrototypeTable] = {}
        self.dims: dict[str, int] = {}
        self.contributions: dict[str, dict[str, PrototypeTable]] = {}
        self.clients: dict[str, ClientRecord] = {}
        self.revoked: dict[str, int] = {}  # client -> version of its latest revocation (since start-up)
        self._memory_audit: list[tuple[int, str, str, str, float]] = []  # in-memory stores: this run's audit
        self.store_id = f"memory-{uuid.uuid4().hex}"  # unique: clients bind their state to it
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.max_batch = max_batch
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self._queue: deque[Pending] = deque()
        self._queue_cond = threading.Condition()
        self._queued_bytes = 0  # of the pushes in `_queue` and the batch being written
        self._closing = False
        self._dirty_clients: set[str] = set()  # changed classes are found by their versions at checkpoint
        self._checkpoint_version = 0
        self._last_checkpoint = time.monotonic()
        self.commits = 0  # group commits made, and the operations they held (the mean batch size shows batching)
        self.committed_operations = 0
        self._log: Log | None = None
        self._failing = ""  # the durability error being reported, so a full disk is logged once, not per batch
        self._writer: threading.Thread | None = None
        self.epochs: list[tuple[int, str]] = [(0, uuid.uuid4().hex)]  # (start version, id): one where history forks
        self._follower: Follower | None = None
        self._catch_up_wanted = False  # a follower (or a pull ahead of this replica) asks the writer to catch up
        if self.path is not None:
            self._log = open_log(path, synchronous)  # SqliteLog, or PostgresLog for a postgresql:// URL
            try:
                self._load(repair)
            except DatabaseDamaged:
                self._log.close()
                raise
            except Exception as error:  # noqa: BLE001 - any damage becomes one clear start-up error
                self._log.close()
                raise DatabaseError(f"{self.path}: damaged contents ({type(error).__name__}: {error}); restore "
                                    "the database from a backup and start once with --repair") from error
            self._writer = threading.Thread(target=self._writer_loop, name="fedrecon-store-writer", daemon=True)
            self._writer.start()
            if self._log.replicated:  # other servers append to the same log: follow it
                self._follower = Follower(self._log.listener, self.request_catch_up).start()

    # ----------------------------------------------------------------------------- public API
    def push(
        self, client_id: str, space: str, seq: int, class_ids: Sequence[str], counts: np.ndarray,
        means: np.ndarray,
    ) -> PushAck:
        """Merge one client's deltas exactly once; returns after the push is durable."""
        return self.submit_push(client_id, space, seq, class_ids, counts, means).wait()

    def submit_push(
        self, client_id: str, space: str, seq: int, class_ids: Sequence[str], counts: np.ndarray,
        means: np.ndarray, after: Pending | None = None,
    ) -> Pending:
        """Queue a push and return at once (`wait()` on the result); `after`: refuse it if that push was refused.

        The writer thread checks the content (a batch at a time) and computes its sums, log encoding and
        digest, so the callers' threads (one per call or stream) do little and contend less for the GIL.
        """
        try:
            wire = np.asarray(means)
            if wire.dtype.kind != "f" or wire.dtype.itemsize < 4:  # float16 / bfloat16 widen exactly to float32
                wire = wire.astype(np.float32 if wire.dtype.itemsize < 4 else np.float64)
            request = Pending("push", client_id, space, int(seq), list(class_ids), np.asarray(counts, dtype=np.int64),
                              wire, after=after)
        except (OverflowError, TypeError, ValueError) as error:
            raise InvalidPush(f"counts must be integers in 1..{MAX_COUNT} and means a float matrix ({error})") \
                from error
        return self._enqueue(request)

    def revoke(self, client_id: str, actor: str = "") -> PushAck:
        """Remove every contribution of one client from every class (exact unlearning); durable."""
        return self._submit(Pending("revoke", client_id, actor=actor))

    def check_since(self, since: int, epoch: str = "") -> None:
        """Refuse a `since` this store never reached, or one from another epoch (VersionAhead): the rule of Pull
        and Watch alike. `epoch` (the one the client's `since` came from) is checked when given."""
        if since > self.version:
            raise VersionAhead(f"since={since} is ahead of this store's version {self.version} "
                               f"(a different or reset store?); pull again with since=0")
        if epoch and since and epoch != self.epoch_of(since):
            raise VersionAhead(f"since={since} comes from epoch {epoch}, which this store does not hold (it was "
                               "restored from a backup?); pull again with since=0")

    def epoch_of(self, version: int) -> str:
        """The epoch a version belongs to: the latest one started before it ("" for version 0)."""
        found = ""
        for start, epoch in self.epochs:
            if start < version:
                found = epoch
        return found

    @property
    def epoch(self) -> str:
        """The current epoch (started by this server's start)."""
        return self.epochs[-1][1]

    def pull(self, space: str, since: int = 0, page_token: str = "", max_bytes: int = 0,
             itemsize: int = 8) -> Snapshot:
        """Merged (count, mean) of classes of `space` changed after `since` (0: all live classes).

        With `max_bytes` the answer is one page of at most that many wire bytes (means of `itemsize`
        bytes); pass its `next_page_token` back as `page_token` for the next (see `paging`). A replica behind
        `since` (or the token) first waits for it to catch up (`await_version`).
        """
        self.await_version(max(since, token_version(page_token) if page_token else 0))
        with self._lock:
            self.check_since(since)
            try:
                cursor = Cursor.parse(page_token, since, self.version) if page_token else None
            except BadPageToken as error:
                raise InvalidRequest(str(error)) from None
            table = self.spaces.get(space)
            if table is None:
                return Snapshot(space, self.version, [], np.zeros(0, np.int64),
                                  np.zeros((0, self.dims.get(space, 0)), np.float64))
            if cursor is None:
                rows = table.live_rows() if since == 0 else table.changed_since(since)
                per_row = (table.dim or 0) * itemsize + ROW_OVERHEAD + self.limits.max_class_id_bytes
                if not max_bytes or len(rows) * per_row + REPLY_OVERHEAD <= max_bytes:  # surely one page
                    return self._rows_result(space, table, rows, itemsize=itemsize)
                cursor = Cursor.first(since, self.version)
            rows, token = page_rows(table, cursor, max_bytes or 2**62, itemsize)
            return self._rows_result(space, table, rows, token, itemsize)

    def _rows_result(self, space: str, table: PrototypeTable, rows: np.ndarray, token: str = "",
                     itemsize: int = 8) -> Snapshot:
        """The snapshot of some rows; means already in float32 for a float32 pull (rounded once, as the wire
        would), float64 otherwise (a narrower wire dtype is rounded from float64 by the codec)."""
        dtype = np.float32 if itemsize == 4 else np.float64
        if len(rows) == len(table) and not token:  # every row (the usual full pull): slices, no per-row gathering
            return Snapshot(space, self.version, list(table.class_ids), table.counts.copy(), table.means(dtype=dtype))
        if len(rows) and (np.diff(rows) == 1).all():  # consecutive rows (a table filled in order): one slice
            class_ids = table.class_ids[int(rows[0]):int(rows[-1]) + 1]
        else:
            class_ids = [table.class_ids[r] for r in rows.tolist()]
        return Snapshot(space, self.version, class_ids, table.counts[rows].copy(), table.means(rows, dtype), token)

    def wait_for_change(self, since: int, timeout: float) -> bool:
        """Block until the version passes `since` (True) or the timeout or close (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self.version > since or self._closing, timeout)
            return self.version > since

    def contribution(self, client_id: str, space: str) -> PrototypeTable:
        """A copy of one client's contributions to a space (empty if none)."""
        with self._lock:
            table = self.contributions.get(client_id, {}).get(space)
            return table.copy() if table is not None else PrototypeTable(self.dims.get(space))

    def contributions_to(self, space: str, class_ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each contributing client's (counts, float64 sums) for `class_ids` of `space` (zeros where it has none).

        Call inside `consistent()` to match a pull of the same version.
        """
        with self._lock:
            out = []
            for tables in self.contributions.values():
                table = tables.get(space)
                if table is None:
                    continue
                rows = table.rows(class_ids, create=False)
                safe = np.maximum(rows, 0)
                present = rows >= 0
                counts = np.where(present, table.counts[safe], 0) if len(table) else np.zeros(len(rows), np.int64)
                sums = np.where(present[:, None], table.sums[safe], 0.0) if len(table) else \
                    np.zeros((len(rows), self.dims.get(space, 0)))
                out.append((counts, sums))
            return out

    def consistent(self) -> threading.RLock:
        """A lock under which several reads see one version (no push is applied in between)."""
        return self._lock

    def client_ids(self) -> list[str]:
        """Every client with contributions, sorted."""
        with self._lock:
            return sorted(self.contributions)

    def client_stats(self) -> list[ClientStats]:
        """Per client: last seq, live classes and examples over every space (sorted by client id)."""
        with self._lock:
            out = []
            for client_id, record in sorted(self.clients.items()):
                tables = self.contributions.get(client_id, {}).values()
                out.append(ClientStats(client_id, record.last_seq, sum(int((t.counts > 0).sum()) for t in tables),
                                       sum(sum(t.counts.tolist()) for t in tables)))
            return out

    def live_classes(self, client_id: str) -> int:
        """Classes one client currently contributes to, over every space."""
        with self._lock:
            return sum(int((t.counts > 0).sum()) for t in self.contributions.get(client_id, {}).values())

    def audit(self) -> list[tuple[int, str, str, str, float]]:
        """Administrative operations (version, kind, client, actor, time): the durable audit table, or this run's."""
        if self._log is None:
            with self._lock:
                return list(self._memory_audit)
        return self._log.read_audit()

    def revoked_at(self, client_id: str) -> int:
        """Version of the client's latest revocation (0 if none since start-up); open streams compare it."""
        with self._lock:
            return self.revoked.get(client_id, 0)

    def client_record(self, client_id: str) -> ClientRecord:
        """Last applied seq of a client (seq 0 if it never pushed)."""
        with self._lock:
            return self.clients.get(client_id, ClientRecord())

    def info(self) -> dict:
        """Version, and per space: dim, live classes, examples, last change version."""
        with self._lock:
            spaces = []
            for name, table in sorted(self.spaces.items()):
                live = table.counts > 0
                spaces.append({"space": name, "dim": int(table.dim or 0), "classes": int(live.sum()),
                               "examples": min(self.examples.get(name, 0), MAX_SPACE_EXAMPLES),
                               "version": int(table.versions.max()) if len(table) else 0})
            return {"store_id": self.store_id, "version": self.version, "clients": len(self.clients),
                    "spaces": spaces}

    def close(self) -> None:
        """Finish queued pushes, checkpoint, close the database. Later pushes are refused."""
        with self._queue_cond:
            if self._closing:
                return
            self._closing = True
            self._queue_cond.notify_all()
        if self._follower is not None:
            self._follower.stop()
        with self._changed:
            self._changed.notify_all()
        if self._writer is not None:
            self._writer.join()

    def __enter__(self) -> PrototypeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- writing
    def _submit(self, request: Pending) -> PushAck:
        return self._enqueue(request).wait()

    def _enqueue(self, request: Pending) -> Pending:
        """Hand a request to the writer thread (durable stores) or process it now (in memory)."""
        if self._log is None:
            if self._closing:
                raise StoreUnavailable("the store is closed")
            with self._write_lock:
                self._process([request])
            return request
        with self._queue_cond:
            if self._closing:
                raise StoreUnavailable("the store is shutting down")
            if request.kind == "push":
                request.nbytes = request.means.nbytes + request.counts.nbytes + 64 * len(request.class_ids)
                if self._queued_bytes and self._queued_bytes + request.nbytes > self.limits.max_queued_bytes:
                    raise StoreBusy(f"{self._queued_bytes:,} bytes of pushes wait to be written (limit "
                                    f"{self.limits.max_queued_bytes:,}); retry shortly")
                self._queued_bytes += request.nbytes
            self._queue.append(request)
            if len(self._queue) == 1:  # the writer only sleeps on an empty queue
                self._queue_cond.notify()
        return request

    def _writer_loop(self) -> None:
        while True:
            with self._queue_cond:
                if not self._queue and not self._closing and not self._catch_up_wanted:
                    self._queue_cond.wait(timeout=self.checkpoint_seconds)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
                closing = self._closing and not self._queue
                follow, self._catch_up_wanted = self._catch_up_wanted, False
            if batch:
                try:
                    self._process(batch)
                except Exception as error:  # noqa: BLE001 - never leave a caller waiting forever
                    log.exception("processing a batch of %d requests failed", len(batch))
                    for request in batch:
                        if not request.done.is_set():
                            request.result, request.error = None, StoreUnavailable(f"internal store error: {error}")
                            request.done.set()
                with self._queue_cond:
                    self._queued_bytes -= sum(request.nbytes for request in batch)
            elif follow:  # a batch catches up anyway
                self._follow()
            if closing or self._checkpoint_due():
                try:
                    self._checkpoint()
                except Exception as error:  # noqa: BLE001 - the log still holds everything; keep serving
                    self._report_failure("checkpoint (the operation log keeps the data)", error)
                    self._last_checkpoint = time.monotonic()  # try again after the interval, not every batch
            if closing:
                assert self._log is not None
                self._log.close()
                return

    def _check_contents(self, batch: list[Pending]) -> None:
        """Content checks, sums and log encoding of a batch's new pushes (refusals set on the push)."""
        by_dim: dict[int, list[Pending]] = {}
        for request in batch:
            if request.kind != "push":
                continue
            try:
                check_content(request.class_ids, request.counts, request.means, self.limits)
            except InvalidPush as error:
                request.error = error
                continue
            by_dim.setdefault(request.means.shape[1], []).append(request)
        for group in by_dim.values():
            check_values(group)
            for request in group:
                if request.error is None:
                    request.packed = pack_operation(request.class_ids, request.counts, request.means)

    def _process(self, batch: list[Pending]) -> None:
        """Validate a batch, make it durable in one commit, then apply and acknowledge it. On a shared log the
        batch first catches up with what others committed, under the database's lock (`Log.batch`), so it is
        validated against the database's exact state; if that cannot be done, nothing is answered but UNAVAILABLE."""
        self._check_contents(batch)
        stage, staged = _Stage(self.version), None
        try:
            with self._batch() as others:
                self._catch_up(others)
                stage, staged = self._stage_all(batch)
                if stage.ops and self._log is not None:
                    self._log.append(stage.ops, stage.new_spaces)
        except Exception as error:  # noqa: BLE001 - refuse the batch, change nothing
            self._report_failure("commit", error)
            for request in staged if staged is not None else [r for r in batch if r.error is None]:
                request.result = None
                request.error = StoreUnavailable(f"could not make the push durable: {error}")
            stage.ops = []
            if isinstance(error, LogBehind):
                self._reload()
        else:
            if stage.ops and self._log is not None:
                self.commits += 1
                self.committed_operations += len(stage.ops)
                self._report_recovery()
        with self._changed:
            self._apply_all(stage.ops)
            if stage.ops:
                self._changed.notify_all()
        for request in batch:
            request.after = request.counts = request.means = request.sums = request.packed = None  # answered:
            request.done.set()  # keep nothing the caller does not need (a long stream's pushes would add up)

    def _batch(self) -> AbstractContextManager[list[Operation]]:
        """The log's batch (what others committed since this store's version), or none for an in-memory store."""
        return nullcontext([]) if self._log is None else self._log.batch(self.version)

    def _stage_all(self, batch: list[Pending]) -> tuple[_Stage, list[Pending]]:
        """Stage a batch's requests against the current state; also returns those whose answers need the commit."""
        stage = _Stage(self.version)
        staged: list[Pending] = []
        for request in batch:
            if request.error is not None:  # refused by the content checks
                continue
            before = len(stage.ops)
            try:
                request.result = self._stage(request, stage)
            except StoreError as error:
                request.error = error
            if len(stage.ops) > before or (request.result is not None and request.client_id in stage.clients):
                staged.append(request)  # its answer stands or falls with this commit (a retry: its original's)
        self._keep_digests(stage)
        return stage, staged

    def _stage(self, request: Pending, stage: _Stage) -> PushAck:
        """Check one request against the state plus the batch so far; record its operation."""
        self.limits.check_text("client_id", request.client_id)
        record = stage.clients.get(request.client_id) or self.clients.get(request.client_id) or ClientRecord()
        if request.kind == "revoke":
            if request.client_id not in self.contributions and request.client_id not in stage.clients:
                raise UnknownClient(f"client {request.client_id!r} has no contributions")
            version = stage.version + 1
            stage.ops.append(Operation(version, "revoke", request.client_id, "", record.last_seq, [],
                                       np.zeros(0, np.int64), np.zeros((0, 0)), request.actor, time.time()))
            stage.version = version
            return PushAck(record.last_seq, version, 0)
        self.limits.check_text("space", request.space)
        if request.seq < 1:
            raise InvalidPush("seq must start at 1")
        retry = record.last_seq > 0 and request.seq == record.last_seq
        if request.after is not None and request.after.error is not None:
            raise with_digest(EarlierPushRefused(request.client_id, request.seq, record.last_seq + 1),
                              last_digest(request.client_id, record, stage))
        if not retry and request.seq != record.last_seq + 1:
            raise with_digest(SequenceGap(request.client_id, request.seq, record.last_seq + 1),
                              last_digest(request.client_id, record, stage))
        if retry:  # the first answer if it is the same push; other content under a used seq is refused
            stored = last_digest(request.client_id, record, stage)
            if stored and stored != request.content_digest():
                raise with_digest(SeqReused(request.client_id, request.seq, record.last_seq + 1), stored)
            return PushAck(request.seq, record.last_version, record.last_classes, duplicate=True)
        self._check_deltas(request, stage)
        version = stage.version + 1
        stage.ops.append(Operation(version, "push", request.client_id, request.space, request.seq,
                                   request.class_ids, request.counts, request.means, at=time.time(),
                                   packed=request.packed, sums=request.sums))
        stage.version = version
        stage.clients[request.client_id] = ClientRecord(request.seq, version, len(request.class_ids))
        stage.pushes[request.client_id] = request
        return PushAck(request.seq, version, len(request.class_ids))

    @staticmethod
    def _keep_digests(stage: _Stage) -> None:
        """Give each client's last push of the batch its digest: only the last is kept in the client's record
        (a retry can only repeat the last seq), so a batch hashes one push per client, not every push."""
        last = {op.client_id: i for i, op in enumerate(stage.ops) if op.kind == "push"}
        for i in last.values():
            op = stage.ops[i]
            stage.ops[i] = replace(op, digest=stage.pushes[op.client_id].content_digest())

    def _check_deltas(self, request: Pending, stage: _Stage) -> None:
        """The checks that depend on the store's state: the space's example bound and its dim."""
        counts, means = request.counts, request.means
        assert counts is not None and means is not None
        added = stage.added.get(request.space, 0) + int(counts.sum())
        if self.examples.get(request.space, 0) + added > MAX_SPACE_EXAMPLES:
            raise InvalidPush(f"space {request.space!r} would hold more than {MAX_SPACE_EXAMPLES} examples "
                              f"(it holds {self.examples.get(request.space, 0)}); this push adds {int(counts.sum())}")
        dim = self.dims.get(request.space) or stage.new_spaces.get(request.space)
        if dim is None:
            stage.new_spaces[request.space] = means.shape[1]
        elif dim != means.shape[1]:
            raise InvalidPush(f"space {request.space!r} has dim {dim}; this push has dim {means.shape[1]}")
        stage.added[request.space] = added
        self._check_quota(stage, "", request, self.limits.max_space_classes, f"space {request.space!r}")
        self._check_quota(stage, request.client_id, request, self.limits.max_client_classes,
                          f"client {request.client_id!r} in space {request.space!r}")

    def _check_quota(self, stage: _Stage, client_id: str, request: Pending, limit: int, what: str) -> None:
        """Refuse a push that would take a table (the space's, or a client's in it) past `limit` classes
        (QuotaExceeded). Fast while far from it: the batch's pushes count as all new until it is near."""
        if not limit:
            return
        table = (self.contributions.get(client_id, {}) if client_id else self.spaces).get(request.space)
        held, key = len(table) if table is not None else 0, (client_id, request.space)
        staged = stage.rows.get(key, 0)
        if held + staged + len(request.class_ids) > limit:
            new = len(request.class_ids) if table is None else int((table.rows(request.class_ids, create=False)
                                                                    < 0).sum())
            if held + staged + new > limit:
                raise QuotaExceeded(f"{what} holds {held} classes; this push would add {new} (quota {limit})")
        stage.rows[key] = staged + len(request.class_ids)

    def _apply_all(self, ops: list[Operation]) -> None:
        """Apply a committed batch: each run of pushes as one table update per space and per contributor
        (the same sums in the same order as one by one, so the result is bit for bit that of `_apply`)."""
        run: list[Operation] = []
        for op in [*ops, None]:
            if op is not None and op.kind == "push":
                run.append(op)
                continue
            if run:
                self._apply_pushes(run)
            run = []
            if op is not None:
                self._apply(op)

    def _apply_pushes(self, ops: list[Operation]) -> None:
        """Apply one or more pushes with one `add_sums` per touched table (global and per contributor)."""
        groups: dict[tuple[str, str], list[Operation]] = {}
        for op in ops:
            groups.setdefault(("", op.space), []).append(op)
            groups.setdefault((op.client_id, op.space), []).append(op)
        for (client_id, space), group in groups.items():
            dim = group[0].means.shape[1]
            tables = self.contributions.setdefault(client_id, {}) if client_id else self.spaces
            table = tables.get(space)
            if table is None:
                table = tables[space] = PrototypeTable(dim)
            self.dims.setdefault(space, dim)
            sums = [op.sums if op.sums is not None else sums_of(op.counts, op.means) for op in group]
            if len(group) == 1:  # one push: its ids are unique, one version for all its rows
                table.add_sums(group[0].class_ids, group[0].counts, sums[0], group[0].version, unique=True)
                continue
            ids = [class_id for op in group for class_id in op.class_ids]
            versions = np.repeat([op.version for op in group], [len(op.class_ids) for op in group])
            table.add_sums(ids, np.concatenate([op.counts for op in group]), np.concatenate(sums), versions)
        for op in ops:
            self.examples[op.space] = self.examples.get(op.space, 0) + int(op.counts.sum())
            self.clients[op.client_id] = ClientRecord(op.seq, op.version, len(op.class_ids), op.digest)
            self._dirty_clients.add(op.client_id)
        self.version = ops[-1].version

    def _apply(self, op: Operation) -> None:
        """Apply one durable operation to memory (also used to replay the log at start-up)."""
        if op.kind == "push":
            self._apply_pushes([op])
            return
        if op.kind != "revoke":
            raise ValueError(f"unknown operation kind {op.kind!r}")
        self.revoked[op.client_id] = op.version
        if self._log is None:
            self._memory_audit.append((op.version, "revoke", op.client_id, op.actor, op.at))
        for space, table in self.contributions.get(op.client_id, {}).items():
            rows = table.live_rows()
            ids = [table.class_ids[r] for r in rows]
            counts, sums = table.counts[rows].copy(), table.sums[rows].copy()
            self.spaces[space].add_sums(ids, -counts, -sums, op.version)
            table.add_sums(ids, -counts, -sums, op.version)
            self.examples[space] -= int(counts.sum())
        self.version = op.version

    # ----------------------------------------------------------------------------- durability
    def _report_failure(self, what: str, error: Exception) -> None:
        """Log a durability error once (with its cause, e.g. SQLITE_FULL), not once per refused batch."""
        text = f"{type(error).__name__}: {error}"
        if text == self._failing:
            log.debug("%s failed again: %s", what, text)
            return
        self._failing = text
        log.error("%s failed: %s; pushes are refused with UNAVAILABLE until it succeeds", what, text,
                  extra={"error": text})

    def _report_recovery(self) -> None:
        if self._failing:
            log.warning("the database accepts writes again (after: %s)", self._failing)
            self._failing = ""

    def _checkpoint_due(self) -> bool:
        pending = self.version - self._checkpoint_version
        return pending >= self.checkpoint_every or (
            pending > 0 and time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds)

    def _checkpoint(self) -> None:
        """Write changed rows and truncate the log (runs on the writer thread)."""
        assert self._log is not None
        if self.version == self._checkpoint_version:
            return
        since = self._checkpoint_version
        with self._lock:
            classes = [r for space, table in self.spaces.items() for r in self._changed_rows(table, since, space)]
            contributions = [r for client_id, tables in self.contributions.items()
                             for space, table in tables.items()
                             for r in self._changed_rows(table, since, space, client_id)]
            clients = [(c, r.last_seq, r.last_version, r.last_classes, r.last_digest)
                       for c in self._dirty_clients for r in [self.clients.get(c, ClientRecord())]]
            version = self.version
        self._log.checkpoint(version, classes, contributions, clients)
        self._checkpoint_version = version
        self._last_checkpoint = time.monotonic()
        self._dirty_clients.difference_update(c for c, *_ in clients)

    @staticmethod
    def _changed_rows(table: PrototypeTable, since: int, space: str, client_id: str = "") -> list[TableRow]:
        """Rows of a table changed after version `since`, as checkpoint rows (sums copied)."""
        rows = table.changed_since(since)
        if not len(rows):
            return []
        counts, versions, sums = table.counts[rows].tolist(), table.versions[rows].tolist(), table.sums[rows]
        return [TableRow(space, table.class_ids[r], counts[i], sums[i], versions[i], client_id)
                for i, r in enumerate(rows.tolist())]

    def _load(self, repair: bool = False) -> None:
        """Restore memory from the checkpointed tables, then replay the log after the checkpoint, verifying
        what is loaded (checksums, the log's continuity, counts against contributions, the high-water mark):
        a mismatch refuses to start (DatabaseDamaged), or with `repair` is mended where it can be and logged."""
        assert self._log is not None
        with self._log.snapshot():  # other replicas may commit and checkpoint meanwhile
            replayed = self._load_snapshot(repair)
        continuous = self._log.check_high_water(self.version, repair)
        self.epochs = self._log.epochs(self.version, fork=not continuous)
        log.info("store %s loaded: version %d (%d operations replayed from the log)", self.path, self.version,
                 replayed)

    def _load_snapshot(self, repair: bool) -> int:
        """The load itself, inside one snapshot of the database; returns how many logged operations it replayed."""
        assert self._log is not None
        self.store_id = self._log.meta("store_id") or "unknown"
        self.dims = self._log.load_spaces()
        damaged: list[TableRow] | None = [] if repair else None
        grouped: dict[tuple[str, str], list[TableRow]] = {}
        for table in ("classes", "contributions"):
            for row in self._log.load_rows(table, damaged):
                grouped.setdefault((row.client_id, row.space), []).append(row)
        for (client_id, space), rows in grouped.items():
            table = PrototypeTable(self.dims[space], capacity=len(rows))
            table.set_rows([r.class_id for r in rows], np.array([r.count for r in rows]),
                           np.stack([r.sum for r in rows]), np.array([r.version for r in rows]))
            if client_id:
                self.contributions.setdefault(client_id, {})[space] = table
            else:
                self.spaces[space] = table
        for row in damaged or ():
            log.warning("--repair: dropped the damaged row of class %r in space %r%s", row.class_id, row.space,
                        f" of client {row.client_id!r}" if row.client_id else "")
        for client_id, *record in self._log.load_clients():
            self.clients[client_id] = ClientRecord(*record)
        self.version = self._checkpoint_version = int(self._log.meta("checkpoint_version") or 0)
        self._verify_counts(repair)
        self.examples = {space: sum(table.counts.tolist()) for space, table in self.spaces.items()}
        replayed = 0
        for op in self._log.load_log(self.version):
            if op.version != self.version + 1:
                raise DatabaseDamaged(f"{self.path}: the log jumps from version {self.version} to {op.version}: "
                                      f"operations {self.version + 1}..{op.version - 1} are missing")
            self._apply(op)
            replayed += 1
        return replayed

    def _verify_counts(self, repair: bool) -> None:
        """Each checkpointed class's count equals the sum of its contributors' counts; with `repair`, a class
        that does not (or whose row was damaged) is rebuilt from its contributions."""
        for space, tables in self._contributions_by_space().items():
            merged = self.spaces.setdefault(space, PrototypeTable(self.dims[space]))
            rows = [merged.rows(table.class_ids) for table in tables]  # a class missing here is added, count 0
            expected = np.zeros(len(merged), np.int64)
            for table, at in zip(tables, rows, strict=True):
                np.add.at(expected, at, table.counts)
            wrong = np.nonzero(expected != merged.counts)[0]
            if not len(wrong):
                continue
            first = int(wrong[0])
            if not repair:
                raise DatabaseDamaged(f"{self.path}: class {merged.class_ids[first]!r} of space {space!r} holds count "
                                      f"{merged.counts[first]} but its contributions add up to {expected[first]} "
                                      f"({len(wrong)} classes disagree); start with --repair to rebuild them from the "
                                      "contributions")
            log.warning("--repair: %d classes of space %r rebuilt from their contributions", len(wrong), space)
            sums = np.zeros((len(merged), merged.dim or 0))
            for table, at in zip(tables, rows, strict=True):
                np.add.at(sums, at, table.sums)
            merged.set_rows([merged.class_ids[r] for r in wrong.tolist()], expected[wrong], sums[wrong], self.version)

    def _contributions_by_space(self) -> dict[str, list[PrototypeTable]]:
        """Every client's contribution table, grouped by space."""
        out: dict[str, list[PrototypeTable]] = {}
        for tables in self.contributions.values():
            for space, table in tables.items():
                out.setdefault(space, []).append(table)
        return out
