"""SQLite persistence for the prototype store: an operation log plus checkpointed tables (WAL mode).

Every applied operation (a push, a revocation) is one row of `log`, written in a transaction that
may hold several operations (group commit); the store acknowledges them only after that commit.
A checkpoint writes the changed rows of the in-memory tables (`classes`, `contributions`,
`clients`) and deletes the log up to its version in the same transaction, so a restart loads the
tables and replays the remaining log with the same math and gets exactly the same state.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrecon.proto.digest import (  # noqa: F401 - the contract's digest, re-exported for the store
    content_digest,
    pack_means,
    pack_operation,
)
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.sqlite_files import FileLocked, Transaction, foreign_tables, get_meta, lock_file, set_meta
from fedrecon.server.highwater import HighWaterMark

log = logging.getLogger("fedrecon.store")

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spaces (space TEXT PRIMARY KEY, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS classes (
  space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL, sum BLOB NOT NULL,
  version INTEGER NOT NULL, crc INTEGER NOT NULL DEFAULT -1, PRIMARY KEY (space, class_id));
CREATE TABLE IF NOT EXISTS contributions (
  client_id TEXT NOT NULL, space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL,
  sum BLOB NOT NULL, version INTEGER NOT NULL, crc INTEGER NOT NULL DEFAULT -1,
  PRIMARY KEY (client_id, space, class_id));
CREATE TABLE IF NOT EXISTS clients (
  client_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, last_version INTEGER NOT NULL,
  last_classes INTEGER NOT NULL, last_digest TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS log (
  version INTEGER PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL, space TEXT NOT NULL,
  seq INTEGER NOT NULL, class_ids TEXT NOT NULL, counts BLOB NOT NULL, means BLOB NOT NULL,
  dim INTEGER NOT NULL, actor TEXT NOT NULL DEFAULT '', at REAL NOT NULL, crc INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS audit (
  version INTEGER PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL, actor TEXT NOT NULL,
  at REAL NOT NULL);
"""


TABLES = {"meta", "spaces", "classes", "contributions", "clients", "log", "audit"}
CHECKSUMMED = ("classes", "contributions", "log")  # a `crc` column per row (-1: written before checksums)


@dataclass(frozen=True)
class Operation:
    """One logged change: a push of deltas, or the revocation of a client's contributions."""

    version: int
    kind: str  # "push" | "revoke"
    client_id: str
    space: str
    seq: int
    deltas: Deltas  # a push's content, means float64 from the log or a push's wire float32/float64; a revocation's
    # is empty
    actor: str = ""
    at: float = 0.0
    digest: str = ""  # of a push's content (`content_digest`); not stored, recomputed from the row on load
    packed: tuple[str, bytes, bytes] | None = None  # `pack_operation` of the content, when computed beforehand
    sums: np.ndarray | None = None  # float64 count * mean, when computed beforehand (not stored)


def log_row(op: Operation) -> tuple:
    """The `log` table row of an operation, its checksum last."""
    row = (op.version, op.kind, op.client_id, op.space, op.seq, *(op.packed or pack_operation(*op.deltas)),
           op.deltas.dim, op.actor, op.at)
    return (*row, checksum(*row))


def next_epochs(recorded: str | None, version: int, fork: bool) -> tuple[list[tuple[int, str]], str]:
    """The epochs (start version, id) of a store starting at `version`: a new one only where its history forks
    (a new store, or one served as it is after losing acknowledged operations); and their JSON if they changed.

    A client's `since` from the lost history is so told apart from the same number in the new one."""
    epochs = [(int(v), str(e)) for v, e in json.loads(recorded or "[]")]
    if epochs and not fork:
        return epochs, ""
    epochs.append((version, uuid.uuid4().hex))
    return epochs, json.dumps(epochs)


@dataclass(frozen=True)
class TableRow:
    """A checkpointed (space, class) or (client, space, class) sum and count."""

    space: str
    class_id: str
    count: int
    sum: np.ndarray
    version: int
    client_id: str = ""


def table_row(row: TableRow) -> tuple:
    """The `contributions` row of a checkpointed row (`[1:]`: the `classes` row), its checksum last."""
    fields = (row.client_id, row.space, row.class_id, row.count, row.sum.astype("<f8").tobytes(), row.version)
    return (*fields, checksum(*fields))


class DatabaseError(RuntimeError):
    """The database cannot be served: held by another server, read-only, damaged, or not fedrecon's."""


class DatabaseDamaged(DatabaseError):
    """What the database holds contradicts itself or what this server committed: refused, never served."""


class LogBehind(DatabaseError):
    """A replica's version is older than the oldest log row kept: it must load the checkpoint again."""


class DatabaseLocked(DatabaseError):
    """Another process (a second server) already writes this database."""


def checksum(*fields: object) -> int:
    """CRC-32 of a stored row's fields (text, numbers, bytes), to notice a flipped byte when it is loaded."""
    crc = 0
    for value in fields:
        data = value if isinstance(value, bytes) else str(value).encode()
        crc = zlib.crc32(struct.pack("<Q", len(data)) + data, crc)
    return crc


def lock_writer(path: Path) -> int:
    """Take the one-writer lock of a database (flock on `<db>-lock`, released by the OS when the process dies)."""
    lock_path = Path(f"{path}-lock")
    try:
        return lock_file(lock_path)
    except FileLocked:
        raise DatabaseLocked(f"{path} is in use by another fedrecon server (it holds {lock_path}); stop that "
                             "server or give another --db") from None
    except OSError as error:
        raise DatabaseError(f"{path}: cannot open the lock file {lock_path} ({error.strerror})") from error


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

    replicated = False  # one server per file (the flock): nobody else appends, nothing to follow

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
        self.store_id = self.meta("store_id") or ""
        self.mark = HighWaterMark(self.path)

    def _open(self, synchronous: str) -> None:
        """Check the file is fedrecon's (or empty) and writable, then create or upgrade the schema."""
        if foreign_tables(self.conn, TABLES):  # (only fedrecon's tables, without a schema row: a first start cut short)
            tables = sorted(r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
            raise DatabaseError(f"{self.path} is an SQLite database of something else (tables: "
                                f"{', '.join(tables[:5])}); fedrecon leaves it untouched. Give another --db")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.executescript(SCHEMA)
        for table in CHECKSUMMED:  # a database written before rows were checksummed: checked from now on
            if "crc" not in {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER NOT NULL DEFAULT -1")
        found = self.meta("schema")
        if found is not None and found != SCHEMA_VERSION:
            raise DatabaseError(f"{self.path}: schema version {found}, this fedrecon expects {SCHEMA_VERSION}")
        with self.transaction():  # also proves the file is writable before the server says it is serving
            self.created = found is None  # a new database (also one whose contents were lost with its -wal)
            if found is None:
                self.set_meta("schema", SCHEMA_VERSION)
                self.set_meta("store_id", uuid.uuid4().hex)
                self.set_meta("checkpoint_version", "0")
            self.set_meta("opened_at", repr(time.time()))

    def transaction(self) -> Transaction:
        """`with log.transaction():` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return Transaction(self.conn)

    def meta(self, key: str) -> str | None:
        """A metadata value, or None."""
        return get_meta(self.conn, key)

    def set_meta(self, key: str, value: str) -> None:
        """Set a metadata value (inside the caller's transaction)."""
        set_meta(self.conn, key, value)

    def append(self, operations: Iterable[Operation], new_spaces: dict[str, int]) -> None:
        """Durably append operations (and register new spaces) in one transaction."""
        operations = list(operations)
        rows = [log_row(op) for op in operations]
        with self.transaction():
            if new_spaces:
                self.conn.executemany("INSERT OR IGNORE INTO spaces (space, dim) VALUES (?, ?)",
                                      list(new_spaces.items()))
            self.conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.conn.executemany(
                "INSERT INTO audit VALUES (?, ?, ?, ?, ?)",
                [(op.version, op.kind, op.client_id, op.actor, op.at) for op in operations if op.kind != "push"])
        if operations:
            self.mark.write(self.store_id, operations[-1].version)

    @contextmanager
    def batch(self, version: int) -> Iterator[list[Operation]]:
        """A writer's turn: no other writer, so nothing to catch up (`append` commits on its own)."""
        yield []

    def read_after(self, version: int) -> list[Operation]:
        """Operations others committed after `version`: none (one writer)."""
        return []

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A load needs no snapshot: nobody else writes the file."""
        yield

    def checkpoint(
        self, version: int, classes: list[TableRow], contributions: list[TableRow],
        clients: list[tuple[str, int, int, int, str]],
    ) -> None:
        """Write changed table rows and drop the log up to `version`, atomically."""
        with self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO classes VALUES (?, ?, ?, ?, ?, ?)",
                                  [table_row(r)[1:] for r in classes])
            self.conn.executemany("INSERT OR REPLACE INTO contributions VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  [table_row(r) for r in contributions])
            self.conn.executemany("INSERT OR REPLACE INTO clients VALUES (?, ?, ?, ?, ?)", clients)
            self.conn.execute("DELETE FROM log WHERE version <= ?", (version,))
            self.set_meta("checkpoint_version", str(version))

    def load_spaces(self) -> dict[str, int]:
        """space -> dim."""
        return dict(self.conn.execute("SELECT space, dim FROM spaces").fetchall())

    def load_rows(self, table: str, damaged: list[TableRow] | None = None) -> Iterator[TableRow]:
        """Checkpointed rows of `classes` or `contributions`, in insertion order; a row that fails its checksum
        is refused (DatabaseDamaged), or with `damaged` set aside there and skipped."""
        if table == "classes":
            query = "SELECT '', space, class_id, count, sum, version, crc FROM classes ORDER BY rowid"
        elif table == "contributions":
            query = "SELECT client_id, space, class_id, count, sum, version, crc FROM contributions ORDER BY rowid"
        else:
            raise ValueError(table)
        for client_id, space, class_id, count, blob, version, crc in self.conn.execute(query):
            row = TableRow(space, class_id, count, np.frombuffer(blob, dtype="<f8"), version, client_id)
            if crc != -1 and crc != checksum(client_id, space, class_id, count, blob, version):
                if damaged is None:
                    raise DatabaseDamaged(f"{self.path}: the stored row of class {class_id!r} in space {space!r}"
                                          f"{f' of client {client_id!r}' if client_id else ''} fails its checksum")
                damaged.append(row)
                continue
            yield row

    def load_clients(self) -> list[tuple[str, int, int, int, str]]:
        """(client_id, last_seq, last_version, last_classes, last_digest) rows."""
        return self.conn.execute(
            "SELECT client_id, last_seq, last_version, last_classes, last_digest FROM clients").fetchall()

    def load_log(self, after: int) -> Iterator[Operation]:
        """Logged operations after a version, in order."""
        query = "SELECT * FROM log WHERE version > ? ORDER BY version"
        for row in self.conn.execute(query, (after,)):
            version, kind, client_id, space, seq, ids, counts, means, dim, actor, at, crc = row
            if crc != -1 and crc != checksum(*row[:-1]):
                raise DatabaseDamaged(f"{self.path}: logged operation {version} fails its checksum")
            class_ids = json.loads(ids)
            counts_array, means_array = np.frombuffer(counts, dtype="<i8"), unpack_means(means, len(class_ids), dim)
            digest = content_digest(space, (ids, counts, means)) if kind == "push" else ""
            yield Operation(version, kind, client_id, space, seq, Deltas(class_ids, counts_array, means_array), actor,
                            at, digest)

    def check_high_water(self, version: int, repair: bool = False) -> bool:
        """Refuse a database that ends below the last version this server acknowledged (DatabaseDamaged), or with
        `repair` accept it as it is; then record `version` as the mark. True when the history is known to be
        continuous (the mark matched), False where it forks or cannot be vouched for (no mark of this store)."""
        recorded = self.mark.read()
        continuous = recorded is not None and recorded[0] == self.store_id and recorded[1] == version
        if recorded is not None and (recorded[0] == self.store_id or self.created):
            acknowledged = recorded[1]
            if acknowledged > version or recorded[0] != self.store_id:
                self._lost(version, acknowledged, repair)
        self.mark.write(self.store_id, version)
        return continuous

    def _lost(self, version: int, acknowledged: int, repair: bool) -> None:
        """Refuse (or with `repair` log) a database that lost acknowledged operations."""
        lost = (f"{self.path} ends at version {version} but this server acknowledged up to version {acknowledged} "
                f"(a cut, damaged or deleted {self.path.name}-wal file, or a backup restored over the database)")
        if not repair:
            fresh = f"; to start a new, empty store here instead, delete {self.mark.path}" if self.created else ""
            raise DatabaseDamaged(f"{lost}. Put the missing file back, or start with --repair to serve the database "
                                  f"as it is (clients then re-push what they still hold){fresh}")
        log.warning("--repair: %s; serving the database as it is", lost)

    def epochs(self, version: int, fork: bool) -> list[tuple[int, str]]:
        """The store's epochs, with a new one starting at `version` where its history forks (`next_epochs`);
        kept in `meta` (JSON), so an older fedrecon still opens the database."""
        epochs, changed = next_epochs(self.meta("epochs"), version, fork)
        if changed:
            with self.transaction():
                self.set_meta("epochs", changed)
        return epochs

    def read_audit(self) -> list[tuple[int, str, str, str, float]]:
        """The audit trail over a read-only connection of its own (any thread may call it)."""
        return read_audit(self.path)

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed into the main file by SQLite), then release the lock."""
        try:
            self.conn.close()
            self.mark.close()
        finally:
            os.close(self._lock_fd)


AUDIT_QUERY = "SELECT version, kind, client_id, actor, at FROM audit ORDER BY version"


def read_audit(path: Path) -> list[tuple[int, str, str, str, float]]:
    """The audit trail of a store's database, over a read-only connection of its own (any thread may call it)."""
    conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, timeout=5.0)  # '#', '?' quoted
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

