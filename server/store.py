"""The durable prototype store: exactly-once, all-or-nothing merges of per-class deltas.

Three parts: pure validation (`proto.validate`), a writer (`writer`, `staging`) that group-commits batches
of pushes to a `Log` (SQLite or PostgreSQL) and only then applies them and acknowledges each push, and the
in-memory `Tables` that pulls read under a lock, so they never see an unacknowledged push. With `path=None`
the store is in-memory only (tests, simulation); validation and merge math are the same. What pulls answer
is decided by the store's merge rule (`merge`; e.g. `robust.RobustMerge`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedrecon.proto.limits import MAX_COUNT, Limits
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot
from fedrecon.proto.prototypes import PrototypeTable
from fedrecon.server.durable import DatabaseDamaged, DatabaseError
from fedrecon.server.errors import ClientRecord, ClientStats, InvalidPush, InvalidRequest, VersionAhead
from fedrecon.server.follow import Follower, Following, token_version
from fedrecon.server.loading import load_tables
from fedrecon.server.log import Log, location, open_log
from fedrecon.server.merge import MergeRule
from fedrecon.server.paging import BadPageToken, Cursor
from fedrecon.server.pending import Pending
from fedrecon.server.tables import AuditRow, Tables
from fedrecon.server.writer import Writer

log = logging.getLogger("fedrecon.store")


class PrototypeStore(Following, Writer):
    """Per-space merged prototypes plus per-client contributions, durable in a `Log` or in memory; the in-process
    `proto.merger.Merger` (a `Replica` syncs against it directly); on a shared log it follows what the other replicas
    commit (`Following`)."""

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
        merge_rule: MergeRule | None = None,
    ) -> None:
        self.path = None if path is None else location(path)  # the SQLite file, or the URL without password
        self.limits = limits or Limits()
        self.merge_rule = merge_rule or MergeRule()
        self.tables = Tables(keep_audit=path is None)
        self.store_id = f"memory-{uuid.uuid4().hex}"  # unique: clients bind their state to it
        self.epochs: list[tuple[int, str]] = [(0, uuid.uuid4().hex)]  # (start version, id): one where history forks
        self._init_writer(checkpoint_every, checkpoint_seconds, max_batch)
        self._log: Log | None = None
        self._follower: Follower | None = None
        if path is not None:
            self._open(path, synchronous, repair)

    def _open(self, path: str | Path, synchronous: str, repair: bool) -> None:
        """Open the log, load from it, start the writer (and on a shared log the follower)."""
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
        self._start_writer()
        if self._log.replicated:  # other servers append to the same log: follow it
            self._follower = Follower(self._log.listener, self.request_catch_up).start()

    def _load(self, repair: bool = False) -> None:
        """Restore the tables from the log (`loading`) inside one snapshot of it, then check its history."""
        assert self._log is not None
        with self._log.snapshot():  # other replicas may commit and checkpoint meanwhile
            self.store_id = self._log.meta("store_id") or "unknown"
            self._checkpoint_version, replayed = load_tables(self.tables, self._log, self.path, repair)
        continuous = self._log.check_high_water(self.version, repair)
        self.epochs = self._log.epochs(self.version, fork=not continuous)
        log.info("store %s loaded: version %d (%d operations replayed from the log)", self.path, self.version,
                 replayed)

    @property
    def version(self) -> int:
        """The global version: raised by every applied push or revocation."""
        return self.tables.version

    @property
    def dims(self) -> dict[str, int]:
        """space -> dim."""
        return self.tables.dims

    # ----------------------------------------------------------------------------- writing
    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> PushAck:
        """Merge push `seq` of `client_id` exactly once (Merger); returns after the push is durable."""
        return self.submit_push(client_id, seq, space, deltas).wait()

    def submit_push(self, client_id: str, seq: int, space: str, deltas: Deltas, after: Pending | None = None
                    ) -> Pending:
        """Queue a push and return at once (`wait()` on the result); `after`: refuse it if that push was refused.

        The deltas' counts and means may be any array-likes: they become int64 and a float matrix here, without a
        copy when they already are. The writer thread validates the content (a batch at a time) and computes its
        sums, log encoding and digest, so the callers' threads (one per call or stream) do little.
        """
        class_ids, counts, means = deltas
        try:
            wire = np.asarray(means)
            if wire.dtype.kind != "f" or wire.dtype.itemsize < 4:  # float16 / bfloat16 widen exactly to float32
                wire = wire.astype(np.float32 if wire.dtype.itemsize < 4 else np.float64)
            deltas = Deltas(list(class_ids), np.asarray(counts, dtype=np.int64), wire)
        except (OverflowError, TypeError, ValueError) as error:
            raise InvalidPush(f"counts must be integers in 1..{MAX_COUNT} and means a float matrix ({error})") \
                from error
        return self._enqueue(Pending("push", client_id, space, int(seq), deltas, after=after))

    def revoke(self, client_id: str, actor: str = "") -> PushAck:
        """Remove every contribution of one client from every class (exact unlearning); durable."""
        return self._enqueue(Pending("revoke", client_id, actor=actor)).wait()

    def close(self) -> None:
        """Finish queued pushes, checkpoint, close the database. Later pushes are refused."""
        with self._queue_cond:
            if self._closing:
                return
            self._closing = True
            self._queue_cond.notify_all()
        if self._follower is not None:
            self._follower.stop()
        with self.tables.changed:
            self.tables.changed.notify_all()
        if self._writer is not None:
            self._writer.join()

    def __enter__(self) -> PrototypeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- reading
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

    def pull(self, space: str, since: int = 0, epoch: str = "", page_token: str = "", max_bytes: int = 0,
             itemsize: int = 8) -> Snapshot:
        """Merged (count, mean) of classes of `space` changed after `since` (0: all live classes) of `epoch`, as the
        store's merge rule answers them (Merger); the snapshot names the epoch of its version.

        A `since` this store never reached, or one of another `epoch`, is refused (`check_since`: VersionAhead, as
        Pull refuses it over gRPC; the caller pulls again from 0). With `max_bytes` the answer is one page of at
        most that many wire bytes (means of `itemsize` bytes); pass its `next_page_token` back as `page_token` for
        the next (see `paging`). A replica behind `since` (or the token) first waits for it (`await_version`).
        """
        self.await_version(max(since, token_version(page_token) if page_token else 0))
        tables = self.tables
        with tables.lock:
            self.check_since(since, epoch)
            try:
                cursor = Cursor.parse(page_token, since, self.version) if page_token else None
            except BadPageToken as error:
                raise InvalidRequest(str(error)) from None
            plain = tables.pull(space, since, cursor, max_bytes, itemsize, self.limits.max_class_id_bytes)
            merged = self.merge_rule.merge(plain, lambda: tables.contributions_to(space, plain.class_ids))
            return replace(merged, epoch=self.epoch_of(merged.version))

    def wait_for_change(self, since: int, timeout: float) -> bool:
        """Block until the version passes `since` (True) or the timeout or close (False)."""
        with self.tables.changed:
            self.tables.changed.wait_for(lambda: self.version > since or self._closing, timeout)
            return self.version > since

    def consistent(self) -> threading.RLock:
        """A lock under which several reads see one version (no push is applied in between)."""
        return self.tables.lock

    def contribution(self, client_id: str, space: str) -> PrototypeTable:
        """A copy of one client's contributions to a space (empty if none)."""
        with self.tables.lock:
            table = self.tables.contributions.get(client_id, {}).get(space)
            return table.copy() if table is not None else PrototypeTable(self.dims.get(space))

    def client_ids(self) -> list[str]:
        """Every client with contributions, sorted."""
        with self.tables.lock:
            return sorted(self.tables.contributions)

    def client_stats(self) -> list[ClientStats]:
        """Per client: last seq, live classes and examples over every space (sorted by client id)."""
        with self.tables.lock:
            return self.tables.client_stats()

    def live_classes(self, client_id: str) -> int:
        """Classes one client currently contributes to, over every space."""
        with self.tables.lock:
            return self.tables.live_classes(client_id)

    def audit(self) -> list[AuditRow]:
        """Administrative operations (version, kind, client, actor, time): the durable audit table, or this run's."""
        if self._log is None:
            with self.tables.lock:
                return list(self.tables.audit or ())
        return self._log.read_audit()

    def revoked_at(self, client_id: str) -> int:
        """Version of the client's latest revocation (0 if none since start-up); open streams compare it."""
        with self.tables.lock:
            return self.tables.revoked.get(client_id, 0)

    def client_record(self, client_id: str) -> ClientRecord:
        """Last applied seq of a client (seq 0 if it never pushed)."""
        with self.tables.lock:
            return self.tables.clients.get(client_id, ClientRecord())

    def info(self) -> dict:
        """Version, and per space: dim, live classes, examples, last change version."""
        with self.tables.lock:
            return {"store_id": self.store_id, "version": self.version, "clients": len(self.tables.clients),
                    "spaces": self.tables.space_info()}
