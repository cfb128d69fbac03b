"""Replicas: a store on a shared (PostgreSQL) log follows what the other servers commit.

Memory is only ever changed by the store's writer thread. The writer catches up at the start of each batch
(`Log.batch`, under the database's head lock) and whenever a `Follower` asks: the follower LISTENs on the
log's channel with a connection of its own and wakes the writer on each notification, and at least every
`interval` seconds (a notification lost with a connection, or never sent). A replica whose version is older
than the oldest log row kept (it was cut off longer than the retention window) loads the checkpoint again
(`reload`), as at start-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from fedrecon.server.durable import LogBehind, Operation

log = logging.getLogger("fedrecon.store")

CATCH_UP_WAIT = 5.0  # seconds a pull or watch ahead of this replica waits for it to catch up


class Follower:
    """A daemon thread that calls `wake(version)` on each commit notification (version 0: a periodic check)."""

    def __init__(self, listen: Callable[[], Any], wake: Callable[[int], None], interval: float = 1.0) -> None:
        self._listen = listen  # opens a connection that LISTENs on the log's channel
        self._wake = wake
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedrecon-follower", daemon=True)

    def start(self) -> Follower:
        """Start following."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following (within `interval` seconds)."""
        self._stop.set()
        self._thread.join(self.interval + 5.0)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = self._listen()
                latest = 0
                for note in conn.notifies(timeout=self.interval, stop_after=1):  # wake at the first
                    latest = max(latest, int(note.payload or 0))
                self._wake(latest)
            except Exception as error:  # noqa: BLE001 - the database may be down: poll again, reconnect later
                log.debug("follower: %s: %s", type(error).__name__, error)
                if conn is not None:
                    conn.close()
                conn = None
                self._wake(0)
                self._stop.wait(self.interval)
        if conn is not None:
            conn.close()


class Following:
    """The replica half of `PrototypeStore`: catching up with what other replicas commit, on its writer thread.

    Uses the store's writer queue (`_queue_cond`, `_catch_up_wanted`), its `tables`, `_log`, `_follower`,
    `_load` and `_report_failure`."""

    def request_catch_up(self: Any, version: int = 0) -> None:
        """Ask the writer to read what other replicas committed (`version`: a notified head, 0: just check)."""
        if self._follower is None or (version and version <= self.version):
            return
        with self._queue_cond:
            self._catch_up_wanted = True
            self._queue_cond.notify()

    def await_version(self: Any, version: int, timeout: float = CATCH_UP_WAIT) -> bool:
        """Whether this store has applied `version`, waiting up to `timeout` s for a replica to catch up with
        what others committed (a client that pushed on one replica and pulls from another sees its push)."""
        if version <= self.version or self._follower is None:
            return version <= self.version
        self.request_catch_up(version)
        with self.tables.changed:
            self.tables.changed.wait_for(lambda: self.version >= version or self._closing, timeout)
            return self.version >= version

    def _catch_up(self: Any, operations: list[Operation]) -> None:
        """Apply operations other replicas committed (and wake watches and pulls waiting for them)."""
        if operations:
            with self.tables.changed:
                self.tables.apply_all(operations)
                self.tables.changed.notify_all()

    def _follow(self: Any) -> None:
        """Catch up with the shared log between batches (asked by the follower or a waiting pull)."""
        try:
            self._catch_up(self._log.read_after(self.version))
        except LogBehind:
            self._reload()
        except Exception as error:  # noqa: BLE001 - the database may be down: the next check tries again
            self._report_failure("catching up with the log", error)

    def _reload(self: Any) -> None:
        """Load the checkpoint again (`reload`); a failure is reported and tried again later."""
        try:
            reload(self)
        except Exception as error:  # noqa: BLE001
            self._report_failure("loading the checkpoint again", error)


def reload(store: Any) -> None:
    """Load the checkpoint and the log after it again, into fresh memory (the replica fell behind the log kept);
    if that fails, the state stays as it was. Revocations seen so far are kept (open streams compare them)."""
    tables = store.tables
    with tables.changed:
        saved, checkpoint, revoked = tables.save(), store._checkpoint_version, dict(tables.revoked)
        tables.clear()
        try:
            store._load()
        except Exception:
            tables.restore(saved)
            store._checkpoint_version = checkpoint
            raise
        for client_id, version in revoked.items():
            tables.revoked[client_id] = max(version, tables.revoked.get(client_id, 0))
        tables.changed.notify_all()
    log.warning("this replica fell behind the log kept in the database; loaded the checkpoint again (version %d)",
                store.version)


def token_version(page_token: str) -> int:
    """The store version a page token needs (its last key's version and its pull's first version; 0 if it
    is not a token at all: the pull refuses it as usual)."""
    parts = page_token.split(".")
    try:
        return max(int(parts[1]), int(parts[3])) if len(parts) == 5 else 0
    except ValueError:
        return 0
