"""The client state file's tables, and the one step that brings a file written by an older version up to date.

Pulled classes are kept as the server answered them, (count, mean) in `merged`; states written before that keep
them as (count, sum) in `global`, which `upgrade` moves into `merged` once (mean = sum / count, in one
transaction), so a client reads what it pulled without converting it again.
"""

from __future__ import annotations

import sqlite3

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, space TEXT NOT NULL, request BLOB NOT NULL,
  at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (seq INTEGER NOT NULL, space TEXT NOT NULL, request BLOB NOT NULL,
  code TEXT NOT NULL, details TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS local (space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL,
  sum BLOB NOT NULL, PRIMARY KEY (space, class_id));
CREATE TABLE IF NOT EXISTS merged (space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL,
  mean BLOB NOT NULL, PRIMARY KEY (space, class_id));
CREATE TABLE IF NOT EXISTS versions (space TEXT PRIMARY KEY, version INTEGER NOT NULL, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY, space TEXT NOT NULL, request BLOB NOT NULL,
  digest TEXT NOT NULL, source TEXT NOT NULL, version INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pending_local (seq INTEGER NOT NULL, space TEXT NOT NULL, class_id TEXT NOT NULL,
  count INTEGER NOT NULL, sum BLOB NOT NULL, PRIMARY KEY (seq, class_id));
"""
ADDED_COLUMNS = [("pending", "source", "TEXT NOT NULL DEFAULT ''"), ("pending", "digest", "TEXT NOT NULL DEFAULT ''"),
                 ("versions", "epoch", "TEXT NOT NULL DEFAULT ''")]  # states written before they existed
LEGACY_TABLES = {"global"}  # tables of older states that `upgrade` empties into the current ones
TABLES = {"meta", "pending", "dropped", "local", "merged", "versions", "history", "pending_local", "learned"}
KIND = "fedrecon-client-state/2"


def create(db: sqlite3.Connection) -> None:
    """Create the tables and columns a state lacks (each statement is safe to repeat)."""
    db.executescript(SCHEMA)
    for table, column, kind in ADDED_COLUMNS:
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def upgrade(db: sqlite3.Connection) -> None:
    """Move the pulled (count, sum) rows of an older state into `merged` as (count, mean); the caller holds the
    transaction, so a crash leaves the old table or the new one, whole."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'global'").fetchone() is None:
        return
    rows = db.execute("SELECT space, class_id, count, sum FROM global ORDER BY rowid").fetchall()
    db.executemany("INSERT OR REPLACE INTO merged VALUES (?, ?, ?, ?)",
                   [(space, cid, count, _mean_bytes(total, count)) for space, cid, count, total in rows])
    db.execute("DROP TABLE global")


def _mean_bytes(total: bytes, count: int) -> bytes:
    """A stored float64 sum as the float64 mean of `count` examples (zeros for a removed class)."""
    return (np.frombuffer(total, dtype="<f8") / max(int(count), 1)).astype("<f8").tobytes()
