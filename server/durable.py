"""SQLite persistence for the prototype store: an operation log plus checkpointed tables (WAL mode).

Every applied operation (a push, a revocation) is one row of `log`, written in a transaction that
may hold several operations (group commit); the store acknowledges them only after that commit.
A checkpoint writes the changed rows of the in-memory tables (`classes`, `contributions`,
`clients`) and deletes the log up to its version in the same transaction, so a restart loads the
tables and replays the remaining log with the same math and gets exactly the same state.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrecon.proto.digest import (  # noqa: F401 - the contract's digest, re-exported for the store
    DIGEST_PREFIX,
    content_digest,
    pack_means,
    pack_operation,
)

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spaces (space TEXT PRIMARY KEY, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS classes (
  space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL, sum BLOB NOT NULL,
  version INTEGER NOT NULL, PRIMARY KEY (space, class_id));
CREATE TABLE IF NOT EXISTS contributions (
  client_id TEXT NOT NULL, space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL,
  sum BLOB NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (client_id, space, class_id));
CREATE TABLE IF NOT EXISTS clients (
  client_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, last_version INTEGER NOT NULL,
  last_classes INTEGER NOT NULL, last_digest TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS log (
  version INTEGER PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL, space TEXT NOT NULL,
  seq INTEGER NOT NULL, class_ids TEXT NOT NULL, counts BLOB NOT NULL, means BLOB NOT NULL,
  dim INTEGER NOT NULL, actor TEXT NOT NULL DEFAULT '', at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  version INTEGER PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL, actor TEXT NOT NULL,
  at REAL NOT NULL);
"""


TABLES = {"meta", "spaces", "classes", "contributions", "clients", "log", "audit"}


@dataclass(frozen=True)
class Operation:
    """One logged change: a push of deltas, or the revocation of a client's contributions."""

    version: int
    kind: str  # "push" | "revoke"
    client_id: str
    space: str
    seq: int
    class_ids: list[str]
    counts: np.ndarray  # int64
    means: np.ndarray  # n x dim floats (float64 from the log; a push's wire float32 or float64)
    actor: str = ""
    at: float = 0.0
    digest: str = ""  # of a push's content (`content_digest`); not stored, recomputed from the row on load
    packed: tuple[str, bytes, bytes] | None = None  # `pack_operation` of the content, when computed beforehand
    sums: np.ndarray | None = None  # float64 count * mean, when computed beforehand (not stored)


def legacy_content_digest(space: str, class_ids: list[str], counts: np.ndarray, means: np.ndarray) -> str:
    """The digest older versions stored (of int64 counts and float64 means), to check a retry against it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([space, class_ids]).encode())
    h.update(np.ascontiguousarray(counts, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(means, dtype="<f8").tobytes())
    return h.hexdigest()


def same_content(stored: str, space: str, class_ids: list[str], counts: np.ndarray, means: np.ndarray,
                 digest: str) -> bool:
    """Whether a retry's content (`digest`, of the current kind) matches the stored digest of either kind."""
    if stored.startswith(DIGEST_PREFIX):
        return stored == digest
    return stored == legacy_content_digest(space, class_ids, counts, means)


@dataclass(frozen=True)
class TableRow:
    """A checkpointed (space, class) or (client, space, class) sum and count."""

    space: str
    class_id: str
    count: int
    sum: np.ndarray
    version: int
    client_id: str = ""


class DatabaseError(RuntimeError):
    """The database cannot be served: held by another server, read-only, damaged, or not fedrecon's."""


class DatabaseLocked(DatabaseError):
    """Another process (a second server) already writes this database."""


def lock_writer(path: Path) -> int:
    """Take the one-writer lock of a database (flock on `<db>-lock`, released by the OS when the process dies)."""
    lock_path = Path(f"{path}-lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise DatabaseError(f"{path}: cannot open the lock file {lock_path} ({error.strerror})") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseLocked(f"{path} is in use by another fedrecon server (it holds {lock_path}); stop that "
                             "server or give another --db") from None
    return fd


def unpack_means(blob: bytes, rows: int, dim: int) -> np.ndarray:
    """float64 (rows x dim) means from `pack_means` bytes (the width follows from the length)."""
    if rows * dim == 0:
        return np.zeros((rows, dim), dtype=np.float64)
    if len(blob) == rows * dim * 8:
        return np.frombuffer(blob, dtype="<f8").reshape(rows, dim)
    if len(blob) == rows * dim * 4:
        return np.frombuffer(blob, dtype="<f4").astype(np.float64).reshape(rows, dim)
    raise ValueError(f"log row has {len(blob)} bytes of means; expected {rows} x {dim} float32 or float64")


class SqliteLog:
    """The on-disk half of the store: schema, log appends (group commits), checkpoints, loading."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(f"database folder {self.path.parent} does not exist")
        self._lock_fd = lock_writer(self.path)
        try:
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            try:
                self._open(synchronous.upper())
            except BaseException:
                self.conn.close()
                raise
        except sqlite3.Error as error:
            os.close(self._lock_fd)
            raise DatabaseError(f"{self.path}: {_explain(error)}") from error
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self, synchronous: str) -> None:
        """Check the file is fedrecon's (or empty) and writable, then create or upgrade the schema."""
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables - TABLES:  # (only fedrecon's tables, without a schema row: a first start that was cut short)
            raise DatabaseError(f"{self.path} is an SQLite database of something else (tables: "
                                f"{', '.join(sorted(tables)[:5])}); fedrecon leaves it untouched. Give another --db")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.executescript(SCHEMA)
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(clients)")}
        if "last_digest" not in columns:  # a database written before retries were checked by content
            self.conn.execute("ALTER TABLE clients ADD COLUMN last_digest TEXT NOT NULL DEFAULT ''")
        found = self.meta("schema")
        if found is not None and found != SCHEMA_VERSION:
            raise DatabaseError(f"{self.path}: schema version {found}, this fedrecon expects {SCHEMA_VERSION}")
        with self.transaction():  # also proves the file is writable before the server says it is serving
            if found is None:
                self.set_meta("schema", SCHEMA_VERSION)
                self.set_meta("store_id", uuid.uuid4().hex)
                self.set_meta("checkpoint_version", "0")
            self.set_meta("opened_at", repr(time.time()))

    def transaction(self) -> sqlite3.Connection:
        """`with log.transaction():` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return _Transaction(self.conn)  # type: ignore[return-value]

    def meta(self, key: str) -> str | None:
        """A metadata value, or None."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value (inside the caller's transaction)."""
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def append(self, operations: Iterable[Operation], new_spaces: dict[str, int]) -> None:
        """Durably append operations (and register new spaces) in one transaction."""
        operations = list(operations)
        rows = [
            (op.version, op.kind, op.client_id, op.space, op.seq,
             *(op.packed or pack_operation(op.class_ids, op.counts, op.means)),
             op.means.shape[1] if op.means.ndim == 2 else 0, op.actor, op.at)
            for op in operations
        ]
        with self.transaction():
            if new_spaces:
                self.conn.executemany("INSERT OR IGNORE INTO spaces (space, dim) VALUES (?, ?)",
                                      list(new_spaces.items()))
            self.conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.conn.executemany(
                "INSERT INTO audit VALUES (?, ?, ?, ?, ?)",
                [(op.version, op.kind, op.client_id, op.actor, op.at) for op in operations if op.kind != "push"])

    def checkpoint(
        self, version: int, classes: list[TableRow], contributions: list[TableRow],
        clients: list[tuple[str, int, int, int, str]],
    ) -> None:
        """Write changed table rows and drop the log up to `version`, atomically."""
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO classes VALUES (?, ?, ?, ?, ?)",
                [(r.space, r.class_id, r.count, r.sum.astype("<f8").tobytes(), r.version) for r in classes])
            self.conn.executemany(
                "INSERT OR REPLACE INTO contributions VALUES (?, ?, ?, ?, ?, ?)",
                [(r.client_id, r.space, r.class_id, r.count, r.sum.astype("<f8").tobytes(), r.version)
                 for r in contributions])
            self.conn.executemany("INSERT OR REPLACE INTO clients VALUES (?, ?, ?, ?, ?)", clients)
            self.conn.execute("DELETE FROM log WHERE version <= ?", (version,))
            self.set_meta("checkpoint_version", str(version))

    def load_spaces(self) -> dict[str, int]:
        """space -> dim."""
        return dict(self.conn.execute("SELECT space, dim FROM spaces").fetchall())

    def load_rows(self, table: str) -> Iterator[TableRow]:
        """Checkpointed rows of `classes` or `contributions`, in insertion order."""
        if table == "classes":
            query = "SELECT '', space, class_id, count, sum, version FROM classes ORDER BY rowid"
        elif table == "contributions":
            query = "SELECT client_id, space, class_id, count, sum, version FROM contributions ORDER BY rowid"
        else:
            raise ValueError(table)
        for client_id, space, class_id, count, blob, version in self.conn.execute(query):
            yield TableRow(space, class_id, count, np.frombuffer(blob, dtype="<f8"), version, client_id)

    def load_clients(self) -> list[tuple[str, int, int, int, str]]:
        """(client_id, last_seq, last_version, last_classes, last_digest) rows."""
        return self.conn.execute(
            "SELECT client_id, last_seq, last_version, last_classes, last_digest FROM clients").fetchall()

    def load_log(self, after: int) -> Iterator[Operation]:
        """Logged operations after a version, in order."""
        query = "SELECT * FROM log WHERE version > ? ORDER BY version"
        for version, kind, client_id, space, seq, ids, counts, means, dim, actor, at in self.conn.execute(
                query, (after,)):
            class_ids = json.loads(ids)
            counts_array, means_array = np.frombuffer(counts, dtype="<i8"), unpack_means(means, len(class_ids), dim)
            digest = content_digest(space, (ids, counts, means)) if kind == "push" else ""
            yield Operation(version, kind, client_id, space, seq, class_ids, counts_array, means_array, actor, at,
                            digest)

    def start_epoch(self, version: int) -> list[tuple[int, str]]:
        """Record a new epoch starting after `version` (every server start); every epoch (start, id), oldest first.

        A database restored from a backup gets a new epoch where its history forks from the lost one, so a
        client's `since` from the lost history is told apart from the same number in the new one."""
        epochs = [(int(v), str(e)) for v, e in json.loads(self.meta("epochs") or "[]")]
        epochs.append((version, uuid.uuid4().hex))
        with self.transaction():  # in `meta` (JSON), so an older fedrecon still opens the database
            self.set_meta("epochs", json.dumps(epochs))
        return epochs

    def audit(self) -> list[tuple[int, str, str, str, float]]:
        """Administrative operations recorded (version, kind, client, actor, time)."""
        return self.conn.execute(AUDIT_QUERY).fetchall()

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed into the main file by SQLite), then release the lock."""
        try:
            self.conn.close()
        finally:
            os.close(self._lock_fd)


AUDIT_QUERY = "SELECT version, kind, client_id, actor, at FROM audit ORDER BY version"


def read_audit(path: Path) -> list[tuple[int, str, str, str, float]]:
    """The audit trail of a store's database, over a read-only connection of its own (any thread may call it)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return conn.execute(AUDIT_QUERY).fetchall()
    finally:
        conn.close()


def _explain(error: sqlite3.Error) -> str:
    """An sqlite3 error as one line a person can act on."""
    text = str(error)
    if "readonly" in text or "read-only" in text:
        return f"the database is read-only ({text}); the server needs to write it (check file permissions)"
    if "not a database" in text or "malformed" in text:
        return f"not a readable SQLite database ({text}); restore it from a backup or give another --db"
    if "full" in text:
        return f"the disk is full ({text})"
    return text


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        elif self.conn.in_transaction:  # SQLite may already have rolled back (e.g. SQLITE_FULL): keep that error
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
