"""PostgreSQL persistence for the prototype store (psycopg 3): the same log and tables as `SqliteLog`.

Any number of servers (replicas) share one database. Each batch is one transaction that first locks the
one-row `head` counter (`batch`), reads the operations other replicas committed since this one's version,
and only then is staged and appended: exactly-once decisions are made on the database's exact state, and
versions are commit-ordered and gap-free (the next batch cannot take the row before this one commits).
Every append moves `head` and sends a NOTIFY on `fedrecon_log`; followers (`server.follow`) listen for it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict

from fedrecon.proto.payloads import Deltas
from fedrecon.server.durable import (
    TABLES,
    DatabaseError,
    LogBehind,
    Operation,
    TableRow,
    content_digest,
    next_epochs,
    pack_operation,
    unpack_means,
)
from fedrecon.server.log import AuditRow, ClientRow, redact
from fedrecon.server.pgerrors import explain

PG_SCHEMA_VERSION = "1"  # of this schema, apart from SQLite's: each backend's schema changes on its own
LOCK_KEY = int.from_bytes(b"fedrecon", "big")  # advisory lock held while a replica creates or checks the schema
PG_TABLES = TABLES | {"head"}
CONNECT_TIMEOUT = "10"  # seconds, unless the URL says otherwise
CHANNEL = "fedrecon_log"  # NOTIFY channel: the payload is the head version after a commit
RETAIN_SECONDS = 60.0  # a checkpoint keeps log rows younger than this, for replicas still catching up

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE head (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL);
INSERT INTO head (version) VALUES (0);
CREATE TABLE spaces (space TEXT PRIMARY KEY, dim INTEGER NOT NULL);
CREATE TABLE classes (
  space TEXT NOT NULL, class_id TEXT NOT NULL, count BIGINT NOT NULL, sum BYTEA NOT NULL,
  version BIGINT NOT NULL, pos BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (space, class_id));
CREATE TABLE contributions (
  client_id TEXT NOT NULL, space TEXT NOT NULL, class_id TEXT NOT NULL, count BIGINT NOT NULL,
  sum BYTEA NOT NULL, version BIGINT NOT NULL, pos BIGINT GENERATED ALWAYS AS IDENTITY,
  PRIMARY KEY (client_id, space, class_id));
CREATE TABLE clients (
  client_id TEXT PRIMARY KEY, last_seq BIGINT NOT NULL, last_version BIGINT NOT NULL,
  last_classes BIGINT NOT NULL, last_digest TEXT NOT NULL DEFAULT '');
CREATE TABLE log (
  version BIGINT PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL, space TEXT NOT NULL,
  seq BIGINT NOT NULL, class_ids TEXT NOT NULL, counts BYTEA NOT NULL, means BYTEA NOT NULL,
  dim INTEGER NOT NULL, actor TEXT NOT NULL DEFAULT '', at DOUBLE PRECISION NOT NULL);
CREATE TABLE audit (
  version BIGINT PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL, actor TEXT NOT NULL,
  at DOUBLE PRECISION NOT NULL);
ALTER TABLE log ALTER COLUMN means SET STORAGE EXTERNAL;
ALTER TABLE classes ALTER COLUMN sum SET STORAGE EXTERNAL;
ALTER TABLE contributions ALTER COLUMN sum SET STORAGE EXTERNAL;
"""  # float vectors do not compress: EXTERNAL stores large ones out of line without trying

LOG_COLUMNS = "version, kind, client_id, space, seq, class_ids, counts, means, dim, actor, at"
LOG_TYPES = ["bigint", "text", "text", "text", "bigint", "text", "bytea", "bytea", "integer", "text", "float8"]
UPSERT = {
    "classes": "INSERT INTO classes (space, class_id, count, sum, version) VALUES (%s, %s, %s, %s, %s) "
               "ON CONFLICT (space, class_id) DO UPDATE SET count = EXCLUDED.count, sum = EXCLUDED.sum, "
               "version = EXCLUDED.version",
    "contributions": "INSERT INTO contributions (client_id, space, class_id, count, sum, version) "
                     "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (client_id, space, class_id) DO UPDATE SET "
                     "count = EXCLUDED.count, sum = EXCLUDED.sum, version = EXCLUDED.version",
    "clients": "INSERT INTO clients VALUES (%s, %s, %s, %s, %s) ON CONFLICT (client_id) DO UPDATE SET "
               "last_seq = EXCLUDED.last_seq, last_version = EXCLUDED.last_version, "
               "last_classes = EXCLUDED.last_classes, last_digest = EXCLUDED.last_digest",
    "meta": "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
}
STAGE = """CREATE TEMP TABLE IF NOT EXISTS staged (
  ord BIGINT, contribution BOOLEAN, client_id TEXT, space TEXT, class_id TEXT, count BIGINT, sum BYTEA,
  version BIGINT) ON COMMIT DELETE ROWS"""
STAGE_TYPES = ["bigint", "boolean", "text", "text", "text", "bigint", "bytea", "bigint"]
FROM_STAGE = {  # first-insertion order kept in `pos`: new rows take identities in the order they are staged
    "classes": UPSERT["classes"].replace("VALUES (%s, %s, %s, %s, %s)", "SELECT space, class_id, count, sum, "
                                         "version FROM staged WHERE NOT contribution ORDER BY ord"),
    "contributions": UPSERT["contributions"].replace(
        "VALUES (%s, %s, %s, %s, %s, %s)",
        "SELECT client_id, space, class_id, count, sum, version FROM staged WHERE contribution ORDER BY ord"),
}
ROWS_QUERY = {
    "classes": "SELECT ''::text, space, class_id, count, sum, version FROM classes ORDER BY pos",
    "contributions": "SELECT client_id, space, class_id, count, sum, version FROM contributions ORDER BY pos",
}
AUDIT_QUERY = "SELECT version, kind, client_id, actor, at FROM audit ORDER BY version"
LOG_QUERY = f"SELECT {LOG_COLUMNS} FROM log WHERE version > %s ORDER BY version"
RANGE_QUERY = f"SELECT {LOG_COLUMNS} FROM log WHERE version > %s AND version <= %s ORDER BY version"  # up to a head


class LogConflict(DatabaseError):
    """The log's head is not where the append expected it (an append outside `batch` raced another writer)."""


def connection_params(url: str) -> dict[str, str]:
    """libpq parameters of a URL (DatabaseError for one libpq cannot parse), with fedrecon's defaults."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        text = " ".join(str(error).replace(url, "the URL").split())  # libpq quotes the URL, password and all
        raise DatabaseError(f"{redact(url)}: not a valid PostgreSQL URL ({text}); "
                            "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME") from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", f"fedrecon server on {socket.gethostname()} pid {os.getpid()}")
    return params


class PostgresLog:
    """The store's Log in a PostgreSQL database: schema, group commits, checkpoints, loading, one writer."""

    def __init__(self, url: str, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.location = redact(url)
        self._params = connection_params(url)
        self._synchronous = synchronous.upper()
        self.retain_seconds = RETAIN_SECONDS
        self._batch: psycopg.Cursor | None = None  # the cursor of the open `batch`, which `append` joins
        self.conn = self._connect()
        try:
            self._open()
        except psycopg.Error as error:
            self.conn.close()
            raise self._error(error) from None
        except BaseException:
            self.conn.close()
            raise

    replicated = True  # several servers may share the database (the store then follows the log)

    def _connect(self) -> psycopg.Connection:
        """A new autocommit connection (with `synchronous_commit = off` when asked)."""
        try:
            conn = psycopg.connect(**self._params, autocommit=True)
        except psycopg.Error as error:
            raise self._error(error) from None
        try:
            if self._synchronous == "OFF":
                conn.execute("SET synchronous_commit = off")
        except BaseException:
            conn.close()
            raise
        return conn

    def listener(self) -> psycopg.Connection:
        """A connection of its own that LISTENs on the log's channel (for a follower thread)."""
        conn = self._connect()
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _live(self) -> psycopg.Connection:
        """The writer's connection, reconnected if it was lost."""
        if self.conn.closed or self.conn.broken:
            self.conn.close()
            self.conn = self._connect()
        return self.conn

    def _open(self) -> None:
        """Check the database is fedrecon's (or empty), then create the schema in one transaction (replicas
        starting together take turns: an advisory lock for the transaction)."""
        conn = self.conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = "
                                                 "current_schema()")}
            if tables - PG_TABLES:
                raise DatabaseError(f"{self.location} is a PostgreSQL database of something else (tables: "
                                    f"{', '.join(sorted(tables)[:5])}); fedrecon leaves it untouched. Give another "
                                    "--db")
            if not tables:
                conn.execute(SCHEMA)
            found = self.meta("schema")
            if found is not None and found != PG_SCHEMA_VERSION:
                raise DatabaseError(f"{self.location}: schema version {found}, this fedrecon expects "
                                    f"{PG_SCHEMA_VERSION}")
            if found is None:
                if tables:  # tables without a schema row: not written by fedrecon, whose schema is one transaction
                    raise DatabaseError(f"{self.location} holds fedrecon's table names but no schema version; "
                                        "fedrecon leaves it untouched. Give another --db")
                self._set_meta([("schema", PG_SCHEMA_VERSION), ("store_id", uuid.uuid4().hex),
                                ("checkpoint_version", "0")])
            self._set_meta([("opened_at", repr(time.time()))])

    def meta(self, key: str) -> str | None:
        """A metadata value, or None."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, items: list[tuple[str, str]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(UPSERT["meta"], items)

    def append(self, operations: Iterable[Operation], new_spaces: dict[str, int]) -> None:
        """Durably append operations (and register new spaces): inside `batch`, in its transaction (committed when
        the batch ends); otherwise in a transaction of its own, after the head moved from where they follow."""
        operations = list(operations)
        if self._batch is not None:
            self._append(self._batch, operations, new_spaces)
            return
        with self._writing() as cur:
            self._append(cur, operations, new_spaces)

    def _append(self, cur: psycopg.Cursor, operations: list[Operation], new_spaces: dict[str, int]) -> None:
        rows = [(op.version, op.kind, op.client_id, op.space, op.seq,
                 *(op.packed or pack_operation(*op.deltas)), op.deltas.dim, op.actor, op.at) for op in operations]
        audit = [(op.version, op.kind, op.client_id, op.actor, op.at) for op in operations if op.kind != "push"]
        if operations:
            self._advance(cur, operations[0].version - 1, operations[-1].version)
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(operations[-1].version)))  # sent at commit
        if new_spaces:
            cur.executemany("INSERT INTO spaces VALUES (%s, %s) ON CONFLICT DO NOTHING", list(new_spaces.items()))
        with cur.copy(f"COPY log ({LOG_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(LOG_TYPES)
            for row in rows:
                copy.write_row(row)
        if audit:
            cur.executemany("INSERT INTO audit VALUES (%s, %s, %s, %s, %s)", audit)

    @contextmanager
    def batch(self, version: int) -> Iterator[list[Operation]]:
        """One writer's turn: a transaction that holds the `head` row (other replicas' batches wait for its
        commit), yielding the operations committed after `version` by others; `append` inside it joins it."""
        with self._writing() as cur:
            head = cur.execute("SELECT version FROM head FOR UPDATE").fetchone()[0]
            others = self._read_after(cur, version, head)
            self._batch = cur
            try:
                yield others
            finally:
                self._batch = None

    def read_after(self, version: int) -> list[Operation]:
        """Operations committed after `version` (a catch-up read, no lock: commits are in version order, so
        every snapshot holds a prefix of the log)."""
        with self._writing() as cur:
            head = cur.execute("SELECT version FROM head").fetchone()[0]
            return self._read_after(cur, version, head)

    def _read_after(self, cur: psycopg.Cursor, version: int, head: int) -> list[Operation]:
        """The log rows version+1..head; LogBehind if a checkpoint dropped some, DatabaseError if they are lost."""
        if head <= version:
            return []
        operations = [self._operation(row) for row in cur.execute(RANGE_QUERY, (version, head)).fetchall()]
        first = operations[0].version if operations else head + 1
        if first == version + 1 and len(operations) == head - version:  # versions are unique: none missing
            return operations
        checkpointed = int(self.meta("checkpoint_version") or 0)
        if first > version + 1 and checkpointed > version:
            raise LogBehind(f"{self.location}: this server is at version {version}, the log kept starts at {first} "
                            f"(checkpoint {checkpointed}): loading the checkpoint again")
        missing = f"{version + 1}..{first - 1}" if first > version + 1 else f"after {operations[-1].version}"
        raise DatabaseError(f"{self.location}: the log is at version {head} but operations {missing} are missing; "
                            "nothing is acknowledged until they are restored")

    @staticmethod
    def _operation(row: tuple) -> Operation:
        """An operation from its log row (the push's digest recomputed from the stored content)."""
        version, kind, client_id, space, seq, ids, counts, means, dim, actor, at = row
        class_ids = json.loads(ids)
        counts_array, means_array = np.frombuffer(counts, dtype="<i8"), unpack_means(means, len(class_ids), dim)
        digest = content_digest(space, (ids, counts, means)) if kind == "push" else ""
        return Operation(version, kind, client_id, space, seq, Deltas(class_ids, counts_array, means_array), actor, at,
                         digest)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One REPEATABLE READ transaction around a load: tables, clients and log as of one moment, whatever
        other replicas commit or checkpoint meanwhile."""
        try:
            with self._live().transaction():
                self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield
        except psycopg.Error as error:
            raise self._error(error) from error

    @contextmanager
    def _writing(self) -> Iterator[psycopg.Cursor]:
        """A cursor in one transaction of the writer's connection; a psycopg error becomes a one-line DatabaseError."""
        try:
            conn = self._live()
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.Error as error:
            raise self._error(error) from error

    def _advance(self, cur: psycopg.Cursor, expected: int, version: int) -> None:
        """Move the head counter from `expected` to `version`, or refuse the commit (LogConflict)."""
        cur.execute("UPDATE head SET version = %s WHERE version = %s RETURNING version", (version, expected))
        if cur.fetchone() is None:
            head = cur.execute("SELECT version FROM head").fetchone()
            raise LogConflict(f"{self.location}: the log is at version {head[0] if head else '?'}, this server "
                              f"expected {expected} (another writer, or a commit whose answer was lost); restart "
                              "the server to load the database again")

    def checkpoint(self, version: int, classes: list[TableRow], contributions: list[TableRow],
                   clients: list[ClientRow]) -> None:
        """Write changed table rows as the state at `version`, unless another replica already checkpointed at
        `version` or later (checkpoints take turns on the meta row); drop the log up to `version` except the
        rows younger than `retain_seconds`, which replicas still catching up read."""
        with self._writing() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'checkpoint_version' FOR UPDATE").fetchone()
            if row is not None and int(row[0]) >= version:
                return
            cur.execute(STAGE)  # rows go in by COPY, then one upsert per table: several times executemany's speed
            with cur.copy("COPY staged FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(STAGE_TYPES)
                for i, r in enumerate([*classes, *contributions]):
                    copy.write_row((i, bool(r.client_id), r.client_id, r.space, r.class_id, r.count,
                                    r.sum.astype("<f8").tobytes(), r.version))
            cur.execute(FROM_STAGE["classes"])
            cur.execute(FROM_STAGE["contributions"])
            cur.executemany(UPSERT["clients"], clients)
            cur.execute("DELETE FROM log WHERE version <= (SELECT coalesce(max(version), 0) FROM log WHERE "
                        "version <= %s AND at < %s)", (version, time.time() - self.retain_seconds))
            cur.execute(UPSERT["meta"], ("checkpoint_version", str(version)))

    def load_spaces(self) -> dict[str, int]:
        """space -> dim."""
        return dict(self.conn.execute("SELECT space, dim FROM spaces").fetchall())

    def _stream(self, query: str, params: tuple = ()) -> Iterator[tuple]:
        """Rows of a query through a server-side cursor (large tables are not held in memory twice)."""
        with self.conn.transaction(), self.conn.cursor("fedrecon_load", binary=True) as cur:
            cur.itersize = 512
            cur.execute(query, params)
            yield from cur

    def load_rows(self, table: str, damaged: list[TableRow] | None = None) -> Iterator[TableRow]:
        """Checkpointed rows of `classes` or `contributions`, in first-insertion order (PostgreSQL checks its own
        pages; counts are still verified against contributions by the store)."""
        if table not in ROWS_QUERY:
            raise ValueError(table)
        for client_id, space, class_id, count, blob, version in self._stream(ROWS_QUERY[table]):
            yield TableRow(space, class_id, count, np.frombuffer(blob, dtype="<f8"), version, client_id)

    def load_clients(self) -> list[ClientRow]:
        """(client_id, last_seq, last_version, last_classes, last_digest) rows."""
        return self.conn.execute(
            "SELECT client_id, last_seq, last_version, last_classes, last_digest FROM clients").fetchall()

    def load_log(self, after: int) -> Iterator[Operation]:
        """Logged operations after a version, in order."""
        for row in self._stream(LOG_QUERY, (after,)):
            operation = self._operation(row)
            yield operation
            after = operation.version
        head = self.conn.execute("SELECT version FROM head").fetchone()[0]
        if head != after:  # every commit moves the head with its log rows: a difference means rows went missing
            raise DatabaseError(f"{self.location}: the log ends at version {after} but its head says {head}")

    def check_high_water(self, version: int, repair: bool = False) -> bool:
        """Nothing beside the database to compare: the `head` row, checked by `load_log`, plays this part."""
        return True

    def epochs(self, version: int, fork: bool) -> list[tuple[int, str]]:
        """The store's epochs (`next_epochs`), kept in `meta` as SQLite keeps them."""
        epochs, changed = next_epochs(self.meta("epochs"), version, fork)
        if changed:
            with self.conn.transaction():  # under the head row's lock: replicas starting together agree
                self.conn.execute("SELECT version FROM head FOR UPDATE")
                epochs, changed = next_epochs(self.meta("epochs"), version, fork)
                if changed:
                    self._set_meta([("epochs", changed)])
        return epochs

    def read_audit(self) -> list[AuditRow]:
        """The audit trail over a short connection of its own (any thread may call it)."""
        try:
            with psycopg.connect(**self._params, autocommit=True) as conn:
                return conn.execute(AUDIT_QUERY).fetchall()
        except psycopg.Error as error:
            raise self._error(error) from None

    def _error(self, error: psycopg.Error) -> DatabaseError:
        """A psycopg error as one DatabaseError line, naming the database, never quoting its password."""
        text = f"{self.location}: {explain(error)}"
        password = self._params.get("password")
        return DatabaseError(text.replace(password, "***") if password else text)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
