"""A client's durable state: bound store, sequence numbers, the push in flight, and its local prototype memory.

One SQLite file per client (Python's sqlite3, WAL, synchronous FULL). A push is recorded as pending in
the same transaction that removes its deltas from the local memory, so a client that dies at any
point neither loses what it learned nor sends it twice: on restart it retries the pending push under
the same number (the server answers a retry with its first reply). The state is bound to one store
(the server's `store_id`) and refuses to talk to another, so nothing is replayed into the wrong store.
An exclusive lock keeps two processes from using one state at once. `path=None` keeps it in memory.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrecon.client.memory import PrototypeMemory

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, space TEXT NOT NULL, request BLOB NOT NULL,
  at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (seq INTEGER NOT NULL, space TEXT NOT NULL, request BLOB NOT NULL,
  code TEXT NOT NULL, details TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS local (space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL,
  sum BLOB NOT NULL, PRIMARY KEY (space, class_id));
CREATE TABLE IF NOT EXISTS global (space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL,
  sum BLOB NOT NULL, PRIMARY KEY (space, class_id));
CREATE TABLE IF NOT EXISTS versions (space TEXT PRIMARY KEY, version INTEGER NOT NULL, dim INTEGER NOT NULL);
"""
KIND = "fedrecon-client-state/2"


class StateError(ValueError):
    """The state file cannot be used: corrupt, foreign, locked by another process, or bound elsewhere."""


class StoreMismatch(StateError):
    """The state belongs to another store than the server answering now."""


@dataclass(frozen=True)
class PendingPush:
    """A push recorded before sending and not yet acknowledged: its number, space and serialized request."""

    seq: int
    space: str
    request: bytes


def default_state_dir() -> Path:
    """`$FEDRECON_STATE_DIR`, else `$XDG_STATE_HOME/fedrecon`, else `~/.local/state/fedrecon`."""
    if os.environ.get("FEDRECON_STATE_DIR"):
        return Path(os.environ["FEDRECON_STATE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "fedrecon"


def state_path(state_dir: str | Path | None, client_id: str) -> Path:
    """Where one client id's state lives inside a state directory."""
    if not client_id or "/" in client_id or client_id in (".", ".."):
        raise ValueError(f"client id {client_id!r} must be a non-empty name without '/'")
    return Path(state_dir or default_state_dir()).expanduser() / f"{client_id}.db"


def _lock(path: Path, timeout: float) -> int:
    """An exclusive advisory lock on `<path>.lock`, held until the returned descriptor closes (or the process dies)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StateError(f"client state {path} is in use by another process (waited {timeout:g} s)") \
                    from None
            time.sleep(0.05)


class ClientState:
    """The durable state of one client id: store binding, last acknowledged seq, pending push, local memory."""

    def __init__(self, path: str | Path | None, client_id: str, lock_timeout: float = 10.0) -> None:
        self.client_id = client_id
        self.path = None if path is None else Path(path).expanduser()
        self._lock_fd: int | None = None
        if self.path is None:
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.path, lock_timeout)
            try:
                self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            except sqlite3.DatabaseError as error:
                self.close()
                raise StateError(f"client state {self.path} is not a fedrecon client state ({error})") from error
        try:
            self._open()
        except (sqlite3.DatabaseError, ValueError) as error:
            self.close()
            if isinstance(error, StateError):
                raise
            raise StateError(f"client state {self.path} is corrupt or not a fedrecon client state ({error})") \
                from error

    def _open(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StateError(f"{self.path} is an SQLite file of something else (tables {sorted(tables)[:5]}), "
                             "not a fedrecon client state")
        self.db.executescript(SCHEMA)
        with self._transaction():
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (KIND,))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('client_id', ?)", (self.client_id,))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', '0')")
        if self._meta("kind") != KIND:
            raise StateError(f"{self.path}: unsupported client state kind {self._meta('kind')!r} (expected {KIND})")
        owner = self._meta("client_id")
        if owner != self.client_id:
            raise StateError(f"client state {self.path} belongs to client {owner!r}, not {self.client_id!r}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the database and release the lock."""
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ClientState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ binding and sequence
    @property
    def store_id(self) -> str | None:
        """The store this state is bound to (None until the first contact with a server)."""
        return self._meta("store_id")

    @property
    def last_seq(self) -> int:
        """The last push number the bound store acknowledged."""
        return int(self._meta("last_seq") or 0)

    @last_seq.setter
    def last_seq(self, seq: int) -> None:
        """Overwrite the last acknowledged number (e.g. to follow a store after a restore from backup)."""
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(int(seq)),))

    @property
    def pending(self) -> PendingPush | None:
        """The push sent (or about to be sent) and not yet acknowledged."""
        row = self.db.execute("SELECT seq, space, request FROM pending ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else PendingPush(int(row[0]), str(row[1]), bytes(row[2]))

    def bind(self, store_id: str, address: str) -> None:
        """Bind to `store_id` on first contact; refuse (StoreMismatch) a server of another store."""
        bound = self.store_id
        if bound is None:
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('store_id', ?)", (store_id,))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('server', ?)", (address,))
        elif bound != store_id:
            where = f"client state {self.path}" if self.path else "this client's state"
            raise StoreMismatch(
                f"{where} (client {self.client_id!r}) is bound to store {bound} (first used with "
                f"{self._meta('server')}), but the server at {address} is store {store_id}; nothing was sent. "
                "Use another --state-dir (or client id) for that server")

    def begin(self, seq: int, space: str, request: bytes, memory: PrototypeMemory | None = None) -> None:
        """Record push `seq` as pending; with `memory`, persist its remaining local deltas in the same transaction."""
        if seq != self.last_seq + 1:
            raise StateError(f"push {seq} does not follow the last acknowledged push {self.last_seq}")
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM pending").fetchone():
                raise StateError("a push is still pending; it must be resumed first")
            db.execute("INSERT INTO pending VALUES (?, ?, ?, ?)", (seq, space, request, time.time()))
            if memory is not None:
                self._write_local(db, space, memory)

    def begin_all(self, pushes: list[tuple[int, str, bytes]], memory: PrototypeMemory | None = None) -> None:
        """Record consecutive pushes (seq, space, request) as pending at once, with the memory's remaining deltas."""
        if not pushes:
            return
        seqs = [seq for seq, _, _ in pushes]
        if seqs != list(range(self.last_seq + 1, self.last_seq + 1 + len(pushes))):
            raise StateError(f"pushes {seqs[0]}..{seqs[-1]} do not follow the last acknowledged push {self.last_seq}")
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM pending").fetchone():
                raise StateError("a push is still pending; it must be resumed first")
            now = time.time()
            db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?)", [(*push, now) for push in pushes])
            if memory is not None:
                self._write_local(db, pushes[0][1], memory)

    @property
    def all_pending(self) -> list[PendingPush]:
        """Every push recorded and not yet acknowledged, in number order."""
        return [PendingPush(int(seq), str(space), bytes(request)) for seq, space, request in
                self.db.execute("SELECT seq, space, request FROM pending ORDER BY seq")]

    def replace_pending(self, pushes: list[tuple[int, str, bytes]]) -> None:
        """Replace every pending push at once (renumbered after a refused one that was never merged)."""
        with self._transaction() as db:
            db.execute("DELETE FROM pending")
            now = time.time()
            db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?)", [(*push, now) for push in pushes])

    def acknowledge(self, seq: int) -> None:
        """The store acknowledged push `seq`: it is no longer pending."""
        with self._transaction() as db:
            db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq' AND CAST(value AS INTEGER) < ?",
                       (str(seq), seq))

    def drop_pending(self, code: str, details: str) -> PendingPush | None:
        """Give up the pending push after a permanent refusal, keeping a copy in the `dropped` table."""
        pending = self.pending
        if pending is None:
            return None
        with self._transaction() as db:
            db.execute("INSERT INTO dropped VALUES (?, ?, ?, ?, ?, ?)",
                       (pending.seq, pending.space, pending.request, code, details, time.time()))
            db.execute("DELETE FROM pending WHERE seq = ?", (pending.seq,))
        return pending

    def dropped(self) -> list[tuple[int, str, str, str]]:
        """(seq, space, status code, details) of every push dropped after a permanent refusal."""
        return [(int(s), str(sp), str(c), str(d)) for s, sp, c, d in
                self.db.execute("SELECT seq, space, code, details FROM dropped ORDER BY rowid")]

    # ------------------------------------------------------------------ local memory
    def load_memory(self, space: str) -> PrototypeMemory:
        """The memory of one space as last saved (empty for a new space)."""
        row = self.db.execute("SELECT version, dim FROM versions WHERE space = ?", (space,)).fetchone()
        memory = PrototypeMemory(int(row[1]) if row else None)
        for table, target in (("global", memory.global_table), ("local", memory.local)):
            rows = self.db.execute(f"SELECT class_id, count, sum FROM {table} WHERE space = ? ORDER BY rowid",  # noqa: S608
                                   (space,)).fetchall()
            if rows:
                sums = np.stack([np.frombuffer(r[2], dtype="<f8") for r in rows])
                target.set_rows([r[0] for r in rows], np.array([r[1] for r in rows], np.int64), sums, 0)
        if row:
            memory.global_version = int(row[0])
        return memory

    def classes_per_space(self) -> dict[str, int]:
        """How many classes (local or pulled) the state holds in each embedding space."""
        rows = self.db.execute("SELECT space, COUNT(*) FROM (SELECT space, class_id FROM local UNION "
                               "SELECT space, class_id FROM global) GROUP BY space ORDER BY space").fetchall()
        return {str(space): int(n) for space, n in rows}

    def save_local(self, space: str, memory: PrototypeMemory) -> None:
        """Persist the memory's un-pushed local deltas of `space`."""
        with self._transaction() as db:
            self._write_local(db, space, memory)

    def save_global(self, space: str, memory: PrototypeMemory, class_ids: list[str]) -> None:
        """Persist the pulled classes `class_ids` of the memory's global table and its version."""
        table = memory.global_table
        with self._transaction() as db:
            if class_ids:
                rows = table.rows(class_ids, create=False)
                db.executemany("INSERT OR REPLACE INTO global VALUES (?, ?, ?, ?)",
                               [(space, cid, int(table.counts[r]), table.sums[r].astype("<f8").tobytes())
                                for cid, r in zip(class_ids, rows.tolist(), strict=True)])
            db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?)",
                       (space, memory.global_version, memory.dim or 0))

    def _write_local(self, db: sqlite3.Connection, space: str, memory: PrototypeMemory) -> None:
        local = memory.local
        db.execute("DELETE FROM local WHERE space = ?", (space,))
        db.executemany("INSERT INTO local VALUES (?, ?, ?, ?)",
                       [(space, local.class_ids[r], int(local.counts[r]), local.sums[r].astype("<f8").tobytes())
                        for r in local.live_rows().tolist()])
        db.execute("INSERT INTO versions VALUES (?, ?, ?) ON CONFLICT(space) DO UPDATE SET dim = excluded.dim",
                   (space, memory.global_version, memory.dim or 0))

    # ------------------------------------------------------------------ learned images (never counted twice)
    def _learned_table(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS learned (space TEXT NOT NULL, hash TEXT NOT NULL, "
                        "class_id TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (space, class_id, hash))")

    def learned_hashes(self, space: str, hashes: list[str]) -> set[tuple[str, str]]:
        """(content hash, class id) of the images among `hashes` this client already learned in `space`."""
        self._learned_table()
        found: set[tuple[str, str]] = set()
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found |= {(str(h), str(c)) for h, c in self.db.execute(
                f"SELECT hash, class_id FROM learned WHERE space = ? AND hash IN ({marks})",  # noqa: S608
                (space, *chunk))}
        return found

    def save_learned(self, space: str, memory: PrototypeMemory, learned: list[tuple[str, str]]) -> None:
        """Persist the memory's local deltas and the (content hash, class id) of the images just learned, at once."""
        self._learned_table()
        with self._transaction() as db:
            self._write_local(db, space, memory)
            now = time.time()
            db.executemany("INSERT OR REPLACE INTO learned VALUES (?, ?, ?, ?)",
                           [(space, h, cid, now) for h, cid in learned])

    def learned_spaces(self) -> list[str]:
        """The spaces this client learned images in."""
        self._learned_table()
        return [str(r[0]) for r in self.db.execute("SELECT DISTINCT space FROM learned ORDER BY space")]

    def learned_per_class(self, space: str) -> dict[str, int]:
        """How many distinct images this client learned per class of `space` (by content hash)."""
        self._learned_table()
        return {str(c): int(n) for c, n in self.db.execute(
            "SELECT class_id, COUNT(*) FROM learned WHERE space = ? GROUP BY class_id", (space,))}
