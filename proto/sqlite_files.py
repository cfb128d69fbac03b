"""SQLite file plumbing both sides use: a one-process file lock, a transaction, a meta table, "is this file ours".

The server's store (`server/durable.py`) and the client's state (`client/state.py`) each keep one SQLite file
(WAL). They never import each other, and proto is the one layer both build on, so the helpers live here.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from types import TracebackType


class FileLocked(OSError):
    """Another process holds the lock file."""


def lock_file(lock_path: Path, timeout: float = 0.0) -> int:
    """An exclusive advisory lock (flock) on `lock_path`, waiting at most `timeout` s; held until the returned
    descriptor closes (or the process dies). FileLocked if another process keeps it; OSError if it cannot open."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise FileLocked(f"{lock_path} is locked by another process") from None
            time.sleep(0.05)


def foreign_tables(conn: sqlite3.Connection, ours: set[str]) -> list[str]:
    """The tables of the file that are not among `ours` (sorted): any means the file belongs to something else."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return sorted(tables - ours)


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A value of the `meta (key, value)` table, or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Set a value of the `meta` table (inside the caller's transaction)."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


class Transaction:
    """`with Transaction(conn):` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block (or the COMMIT) fails."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
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
