"""The store's writer: a queue of requests, one thread that validates a batch, group-commits it to the `Log`,
then applies it to the `Tables` and answers each request; and the checkpoints of the tables.

A mixin of `PrototypeStore` (as `Following` is): it uses the store's `tables`, `limits` and `_log`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from fedrecon.proto.prototypes import sums_of
from fedrecon.proto.validate import problems
from fedrecon.server.durable import LogBehind, Operation, pack_operation
from fedrecon.server.errors import ClientRecord, InvalidPush, StoreBusy, StoreUnavailable
from fedrecon.server.pending import Pending
from fedrecon.server.staging import Stage, stage_all

log = logging.getLogger("fedrecon.store")


class Writer:
    """The writing half of `PrototypeStore`: queue, group commit, checkpoints (on the writer thread)."""

    def _init_writer(self: Any, checkpoint_every: int, checkpoint_seconds: float, max_batch: int) -> None:
        """The writer's state (its thread starts with `_start_writer`)."""
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.max_batch = max_batch
        self._write_lock = threading.Lock()
        self._queue: deque[Pending] = deque()
        self._queue_cond = threading.Condition()
        self._queued_bytes = 0  # of the pushes in `_queue` and the batch being written
        self._closing = False
        self._checkpoint_version = 0
        self._last_checkpoint = time.monotonic()
        self.commits = 0  # group commits made, and the operations they held (the mean batch size shows batching)
        self.committed_operations = 0
        self._failing = ""  # the durability error being reported, so a full disk is logged once, not per batch
        self._writer: threading.Thread | None = None
        self._catch_up_wanted = False  # a follower (or a pull ahead of this replica) asks the writer to catch up

    def _start_writer(self: Any) -> None:
        self._writer = threading.Thread(target=self._writer_loop, name="fedrecon-store-writer", daemon=True)
        self._writer.start()

    def _enqueue(self: Any, request: Pending) -> Pending:
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
            if request.deltas is not None:
                request.nbytes = request.deltas.means.nbytes + request.deltas.counts.nbytes + \
                    64 * len(request.deltas.class_ids)
                if self._queued_bytes and self._queued_bytes + request.nbytes > self.limits.max_queued_bytes:
                    raise StoreBusy(f"{self._queued_bytes:,} bytes of pushes wait to be written (limit "
                                    f"{self.limits.max_queued_bytes:,}); retry shortly")
                self._queued_bytes += request.nbytes
            self._queue.append(request)
            if len(self._queue) == 1:  # the writer only sleeps on an empty queue
                self._queue_cond.notify()
        return request

    def _writer_loop(self: Any) -> None:
        while True:
            with self._queue_cond:
                if not self._queue and not self._closing and not self._catch_up_wanted:
                    self._queue_cond.wait(timeout=self.checkpoint_seconds)
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
                closing = self._closing and not self._queue
                follow, self._catch_up_wanted = self._catch_up_wanted, False
            if batch:
                self._process_safely(batch)
            elif follow:  # a batch catches up anyway
                self._follow()
            if closing or self._checkpoint_due():
                try:
                    self._checkpoint()
                except Exception as error:  # noqa: BLE001 - the log still holds everything; keep serving
                    self._report_failure("checkpoint (the operation log keeps the data)", error)
                    self._last_checkpoint = time.monotonic()  # try again after the interval, not every batch
            if closing:
                self._log.close()
                return

    def _process_safely(self: Any, batch: list[Pending]) -> None:
        """`_process`, answering every request of the batch even if it fails unexpectedly."""
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

    def _check_contents(self: Any, batch: list[Pending]) -> None:
        """Validate a batch's pushes at once (`validate.problems`: refusals set on the push); then the valid
        pushes' sums (one multiply per dim) and log encodings, on the writer thread rather than the callers'."""
        pushes = [request for request in batch if request.deltas is not None]
        by_dim: dict[int, list[Pending]] = {}
        for request, problem in zip(pushes, problems([r.deltas for r in pushes], self.limits), strict=True):
            if problem is not None:
                request.error = InvalidPush(problem)
                continue
            by_dim.setdefault(request.deltas.dim, []).append(request)
            request.packed = pack_operation(*request.deltas)
        for group in by_dim.values():
            sums = sums_of(np.concatenate([r.deltas.counts for r in group]),
                           np.concatenate([r.deltas.means for r in group]))
            start = 0
            for request in group:
                request.sums = sums[start:start + len(request.deltas.class_ids)]
                start += len(request.deltas.class_ids)

    def _process(self: Any, batch: list[Pending]) -> None:
        """Validate a batch, make it durable in one commit, then apply and acknowledge it. On a shared log the
        batch first catches up with what others committed, under the database's lock (`Log.batch`), so it is
        validated against the database's exact state; if that cannot be done, nothing is answered but UNAVAILABLE."""
        self._check_contents(batch)
        stage, staged = Stage(self.tables.version), None
        try:
            with self._batch() as others:
                self._catch_up(others)
                stage, staged = stage_all(batch, self.tables, self.limits)
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
        with self.tables.changed:
            self.tables.apply_all(stage.ops)
            if stage.ops:
                self.tables.changed.notify_all()
        for request in batch:
            request.answered()

    def _batch(self: Any) -> AbstractContextManager[list[Operation]]:
        """The log's batch (what others committed since this store's version), or none for an in-memory store."""
        return nullcontext([]) if self._log is None else self._log.batch(self.tables.version)

    def _report_failure(self: Any, what: str, error: Exception) -> None:
        """Log a durability error once (with its cause, e.g. SQLITE_FULL), not once per refused batch."""
        text = f"{type(error).__name__}: {error}"
        if text == self._failing:
            log.debug("%s failed again: %s", what, text)
            return
        self._failing = text
        log.error("%s failed: %s; pushes are refused with UNAVAILABLE until it succeeds", what, text,
                  extra={"error": text})

    def _report_recovery(self: Any) -> None:
        if self._failing:
            log.warning("the database accepts writes again (after: %s)", self._failing)
            self._failing = ""

    def _checkpoint_due(self: Any) -> bool:
        pending = self.tables.version - self._checkpoint_version
        return pending >= self.checkpoint_every or (
            pending > 0 and time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds)

    def _checkpoint(self: Any) -> None:
        """Write changed rows and truncate the log (runs on the writer thread)."""
        tables = self.tables
        if tables.version == self._checkpoint_version:
            return
        with tables.lock:
            classes, contributions = tables.changed_rows(self._checkpoint_version)
            clients = [(c, r.last_seq, r.last_version, r.last_classes, r.last_digest)
                       for c in tables.dirty_clients for r in [tables.clients.get(c, ClientRecord())]]
            version = tables.version
        self._log.checkpoint(version, classes, contributions, clients)
        self._checkpoint_version = version
        self._last_checkpoint = time.monotonic()
        tables.dirty_clients.difference_update(c for c, *_ in clients)
