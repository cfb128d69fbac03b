"""A client's durable state: bound store, sequence numbers, the push in flight, and its local prototype memory.

One SQLite file per client (Python's sqlite3, WAL, synchronous FULL). A push is recorded as pending in
the same transaction that removes its deltas from the local memory, so a client that dies at any
point neither loses what it learned nor sends it twice: on restart it retries the pending push under
the same number (the server answers a retry with its first reply). The state is bound to one store
(the server's `store_id`) and refuses to talk to another, so nothing is replayed into the wrong store.
Acknowledged pushes move to a history (content, digest, source, version): a store restored from a backup gets
the ones it lost again, with the same numbers (`reconcile`); a push's source (e.g. a file's digest) tells a
re-run not to push the same file twice. An auth refusal un-sends the pending pushes in one transaction, giving
the exact deltas of memory pushes back to the local table. An exclusive lock keeps two processes from using
one state at once. `path=None` keeps it in memory.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.state_schema import KIND, LEGACY_TABLES, TABLES, create, upgrade
from fedrecon.proto import codec
from fedrecon.proto.digest import push_digest
from fedrecon.proto.sqlite_files import FileLocked, Transaction, foreign_tables, get_meta, lock_file, set_meta
from fedrecon.proto.v1 import recon_pb2 as pb

HISTORY_KEEP = 1024  # acknowledged pushes a state file keeps (a restored store older than that loses the rest)
INSERT_PENDING = "INSERT INTO pending (seq, space, request, at, source, digest) VALUES (?, ?, ?, ?, ?, ?)"
HISTORY_BYTES = 64 << 20  # and at most about this many bytes of them (the newest push is always kept)


class StateError(ValueError):
    """The state file cannot be used: corrupt, foreign, locked by another process, or bound elsewhere."""


class StoreMismatch(StateError):
    """The state belongs to another store than the server answering now."""


@dataclass(frozen=True)
class PendingPush:
    """A recorded push (pending, or acknowledged in the history): number, space, serialized request, content
    digest (`proto.digest`), source ("" or e.g. `npz:<digest>`: what the push was made from) and version."""

    seq: int
    space: str
    request: bytes
    digest: str = ""
    source: str = ""
    version: int = 0


def request_digest(space: str, request: bytes | pb.PushRequest) -> str:
    """The content digest the server records for a PushRequest: a message just built, or one stored serialized."""
    message = pb.PushRequest.FromString(request) if isinstance(request, bytes) else request
    deltas = codec.decode_deltas(message.deltas, float64=False, wire_only=True)
    return push_digest(space, deltas.class_ids, deltas.counts, deltas.means)


Returned = tuple[int, list[str], np.ndarray, np.ndarray]  # (seq, class ids, counts, float64 sums) of a memory push


class ClientState:
    """The durable state of one client id: store binding, last acknowledged seq, pending push, local memory."""

    def __init__(self, path: str | Path | None, client_id: str, lock_timeout: float = 10.0,
                 history_keep: int | None = None) -> None:
        self.client_id = client_id
        self.history_keep = history_keep or (HISTORY_KEEP if path is not None else 16)  # fewer for one in memory
        self.path = None if path is None else Path(path).expanduser()
        self._lock_fd: int | None = None
        if self.path is None:
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            try:
                self._lock_fd = lock_file(lock_path, lock_timeout)
            except FileLocked:
                raise StateError(f"client state {self.path} is in use by another process (waited "
                                 f"{lock_timeout:g} s)") from None
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
        foreign = foreign_tables(self.db, TABLES | LEGACY_TABLES)
        if foreign:
            raise StateError(f"{self.path} is an SQLite file of something else (tables {foreign[:5]}), "
                             "not a fedrecon client state")
        create(self.db)
        with self._transaction():
            upgrade(self.db)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (KIND,))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('client_id', ?)", (self.client_id,))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', '0')")
        if self._meta("kind") != KIND:
            raise StateError(f"{self.path}: unsupported client state kind {self._meta('kind')!r} (expected {KIND})")
        owner = self._meta("client_id")
        if owner != self.client_id:
            raise StateError(f"client state {self.path} belongs to client {owner!r}, not {self.client_id!r}")

    def _transaction(self) -> Transaction:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""
        return Transaction(self.db)

    def _meta(self, key: str) -> str | None:
        return get_meta(self.db, key)

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
        row = self.db.execute("SELECT seq, space, request, digest, source FROM pending ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else PendingPush(int(row[0]), str(row[1]), bytes(row[2]), str(row[3]), str(row[4]))

    def bind(self, store_id: str, address: str) -> None:
        """Bind to `store_id` on first contact; refuse (StoreMismatch) a server of another store."""
        bound = self.store_id
        if bound is None:
            with self._transaction() as db:
                set_meta(db, "store_id", store_id)
                set_meta(db, "server", address)
        elif bound != store_id:
            where = f"client state {self.path}" if self.path else "this client's state"
            raise StoreMismatch(
                f"{where} (client {self.client_id!r}) is bound to store {bound} (first used with "
                f"{self._meta('server')}), but the server at {address} is store {store_id}; nothing was sent. "
                "Use another --state-dir (or client id) for that server")

    @property
    def server_epoch(self) -> str:
        """The server epoch (`Info.epoch`) this state last checked its acknowledged pushes against."""
        return self._meta("server_epoch") or ""

    @server_epoch.setter
    def server_epoch(self, epoch: str) -> None:
        with self._transaction() as db:
            set_meta(db, "server_epoch", epoch)

    def begin(self, seq: int, space: str, request: bytes, memory: PrototypeMemory | None = None,
              source: str = "", digest: str = "") -> None:
        """Record push `seq` as pending; with `memory`, persist its remaining local deltas in the same transaction."""
        self.begin_all([(seq, space, request)], memory, source=source, digests=[digest] if digest else None)

    def begin_all(self, pushes: list[tuple[int, str, bytes]], memory: PrototypeMemory | None = None,
                  returned: list[Returned] | None = None, source: str = "", digests: list[str] | None = None) -> None:
        """Record consecutive pushes (seq, space, request) as pending at once, with the memory's remaining deltas
        and (`returned`) the exact deltas each took from it, given back if the push is refused for auth. `digests`:
        each push's `request_digest`, when the caller made it from the message (else it is read from the bytes)."""
        if not pushes:
            return
        seqs = [seq for seq, _, _ in pushes]
        if seqs != list(range(self.last_seq + 1, self.last_seq + 1 + len(pushes))):
            raise StateError(f"pushes {seqs[0]}..{seqs[-1]} do not follow the last acknowledged push {self.last_seq}")
        digests = digests or [request_digest(space, request) for _, space, request in pushes]
        rows = [(seq, space, request, time.time(), source, digest)
                for (seq, space, request), digest in zip(pushes, digests, strict=True)]
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM pending").fetchone():
                raise StateError("a push is still pending; it must be resumed first")
            db.executemany(INSERT_PENDING, rows)
            space = pushes[0][1]
            db.executemany("INSERT INTO pending_local VALUES (?, ?, ?, ?, ?)", [
                (seq, space, cid, int(n), np.asarray(total, "<f8").tobytes())
                for seq, ids, counts, sums in returned or [] for cid, n, total in zip(ids, counts, sums, strict=True)])
            if memory is not None:
                self._write_local(db, space, memory)

    @property
    def all_pending(self) -> list[PendingPush]:
        """Every push recorded and not yet acknowledged, in number order."""
        return [PendingPush(int(seq), str(space), bytes(request), str(digest), str(source)) for
                seq, space, request, digest, source in
                self.db.execute("SELECT seq, space, request, digest, source FROM pending ORDER BY seq")]

    def renumber_pending(self, first: int) -> None:
        """Number the pending pushes from `first` on (same content, order, source and returnable deltas)."""
        pending = self.all_pending
        with self._transaction() as db:
            db.execute("UPDATE pending_local SET seq = -1 - seq")  # no primary key clash while renumbering
            db.execute("DELETE FROM pending")
            for i, push in enumerate(pending):
                request = pb.PushRequest.FromString(push.request)
                request.seq = first + i
                db.execute(INSERT_PENDING, (first + i, push.space, request.SerializeToString(), time.time(),
                                            push.source, push.digest))
                db.execute("UPDATE pending_local SET seq = ? WHERE seq = ?", (first + i, -1 - push.seq))

    def acknowledge(self, seq: int, version: int = 0, merged_as: int | None = None) -> None:
        """The store acknowledged push `seq` (as number `merged_as`, default `seq`): it moves to the history."""
        number = seq if merged_as is None else merged_as
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO history SELECT ?, space, request, digest, source, ?, ? FROM pending "
                       "WHERE seq = ?", (number, version, time.time(), seq))
            db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
            db.execute("DELETE FROM pending_local WHERE seq = ?", (seq,))
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq' AND CAST(value AS INTEGER) < ?",
                       (str(number), number))
            if number % 16 == 0:  # prune now and then (the byte count reads the whole history)
                self._prune_history(db, number)

    def _prune_history(self, db: sqlite3.Connection, number: int) -> None:
        """Keep the last `history_keep` acknowledged pushes, and about `HISTORY_BYTES` of them."""
        db.execute("DELETE FROM history WHERE seq <= ?", (number - self.history_keep,))
        db.execute("DELETE FROM history WHERE seq < (SELECT seq FROM (SELECT seq, SUM(LENGTH(request)) OVER "
                   "(ORDER BY seq DESC) AS newer FROM history) WHERE newer > ? ORDER BY seq DESC LIMIT 1)",
                   (HISTORY_BYTES,))

    def drop_pending(self, code: str, details: str) -> PendingPush | None:
        """Give up the pending push after a permanent refusal, keeping a copy in the `dropped` table."""
        pending = self.pending
        if pending is None:
            return None
        with self._transaction() as db:
            self._drop(db, pending, code, details)
        return pending

    @staticmethod
    def _drop(db: sqlite3.Connection, push: PendingPush, code: str, details: str) -> None:
        db.execute("INSERT INTO dropped VALUES (?, ?, ?, ?, ?, ?)",
                   (push.seq, push.space, push.request, code, details, time.time()))
        db.execute("DELETE FROM pending WHERE seq = ?", (push.seq,))
        db.execute("DELETE FROM pending_local WHERE seq = ?", (push.seq,))

    def return_pending(self, code: str, details: str, space: str = "", memory: PrototypeMemory | None = None) -> int:
        """Un-send every pending push after an auth refusal (never merged: its number is free again), in one
        transaction: a push made from the local memory gives its deltas back to the memory's local table, any
        other is kept in `dropped`. `memory` (the one in use for `space`) is updated after the commit.
        Returns how many pushes went back to the local memory."""
        back: dict[str, PrototypeMemory] = {}
        returned = set()
        for seq, where, class_id, count, blob in self.db.execute(
                "SELECT seq, space, class_id, count, sum FROM pending_local ORDER BY seq, rowid").fetchall():
            if where not in back:
                held = memory if memory is not None and where == space else self.load_memory(where)
                back[where] = held.with_local(held.local.copy())
            back[where].local.add_sums([class_id], np.array([count]), np.frombuffer(blob, "<f8")[None, :])
            returned.add(seq)
        pending = self.all_pending
        with self._transaction() as db:
            for push in pending:
                if push.seq not in returned:
                    self._drop(db, push, code, details)
            db.execute("DELETE FROM pending")
            db.execute("DELETE FROM pending_local")
            for where, rest in back.items():
                self._write_local(db, where, rest)
        if memory is not None and space in back:
            memory.local = back[space].local
        return len(returned)

    def adopt(self, last: int) -> None:
        """Follow the store's numbering: its last push of this client is `last`; pending pushes follow it."""
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(int(last)),))
        self.renumber_pending(last + 1)

    def reopen(self, first: int) -> None:
        """The store lost the acknowledged pushes from `first` on: make them pending again (same numbers and content),
        ahead of the pending ones, in one transaction."""
        with self._transaction() as db:
            db.execute("INSERT INTO pending (seq, space, request, at, source, digest) SELECT seq, space, request, ?, "
                       "source, digest FROM history WHERE seq >= ?", (time.time(), first))
            db.execute("DELETE FROM history WHERE seq >= ?", (first,))
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(first - 1),))

    def record_version(self, seq: int, version: int) -> None:
        """The version at which the store (again) merged acknowledged push `seq`."""
        with self._transaction() as db:
            db.execute("UPDATE history SET version = ? WHERE seq = ?", (version, seq))

    # ------------------------------------------------------------------ history
    def pushed(self, seq: int) -> PendingPush | None:
        """The acknowledged push `seq` from the history (None if this state never kept it)."""
        row = self.db.execute("SELECT seq, space, request, digest, source, version FROM history WHERE seq = ?",
                              (seq,)).fetchone()
        return None if row is None else PendingPush(int(row[0]), str(row[1]), bytes(row[2]), str(row[3]),
                                                    str(row[4]), int(row[5]))

    def history(self, first: int = 1) -> list[PendingPush]:
        """The acknowledged pushes numbered `first` and later, in order."""
        return [PendingPush(int(a), str(b), bytes(c), str(d), str(e), int(f)) for a, b, c, d, e, f in
                self.db.execute("SELECT seq, space, request, digest, source, version FROM history WHERE seq >= ? "
                                "ORDER BY seq", (first,))]

    def find_source(self, source: str) -> PendingPush | None:
        """The latest acknowledged push made from `source` (e.g. an .npz file's digest), if any."""
        row = self.db.execute("SELECT seq FROM history WHERE source = ? ORDER BY seq DESC LIMIT 1",
                              (source,)).fetchone()
        return None if row is None else self.pushed(int(row[0]))

    def dropped(self) -> list[tuple[int, str, str, str]]:
        """(seq, space, status code, details) of every push dropped after a permanent refusal."""
        return [(int(s), str(sp), str(c), str(d)) for s, sp, c, d in
                self.db.execute("SELECT seq, space, code, details FROM dropped ORDER BY rowid")]

    # ------------------------------------------------------------------ local memory
    def load_memory(self, space: str) -> PrototypeMemory:
        """The memory of one space as last saved (empty for a new space)."""
        row = self.db.execute("SELECT version, dim, epoch FROM versions WHERE space = ?", (space,)).fetchone()
        memory = PrototypeMemory(int(row[1]) if row else None)
        for table, target in (("merged", memory.global_table), ("local", memory.local)):  # means; sums
            rows = self.db.execute(f"SELECT * FROM {table} WHERE space = ? ORDER BY rowid", (space,)).fetchall()  # noqa: S608
            if rows:
                vectors = np.stack([np.frombuffer(r[3], dtype="<f8") for r in rows])
                target.set_rows([r[1] for r in rows], np.array([r[2] for r in rows], np.int64), vectors, 0)
        if row:
            memory.global_version, memory.global_epoch = int(row[0]), str(row[2])
        return memory

    def classes_per_space(self) -> dict[str, int]:
        """How many classes (local or pulled) the state holds in each embedding space."""
        rows = self.db.execute("SELECT space, COUNT(*) FROM (SELECT space, class_id FROM local UNION "
                               "SELECT space, class_id FROM merged) GROUP BY space ORDER BY space").fetchall()
        return {str(space): int(n) for space, n in rows}

    def save_local(self, space: str, memory: PrototypeMemory) -> None:
        """Persist the memory's un-pushed local deltas of `space`."""
        with self._transaction() as db:
            self._write_local(db, space, memory)

    def save_global(self, space: str, memory: PrototypeMemory, class_ids: list[str], reset: bool = False) -> None:
        """Persist the pulled classes `class_ids` of the memory's global table, its version and epoch (`reset`: the
        table was replaced by a full pull)."""
        table = memory.global_table
        with self._transaction() as db:
            if reset:
                db.execute("DELETE FROM merged WHERE space = ?", (space,))
            if class_ids:
                rows = table.rows(class_ids, create=False)
                means = table.means(rows).astype("<f8")
                db.executemany("INSERT OR REPLACE INTO merged VALUES (?, ?, ?, ?)",
                               [(space, cid, int(table.counts[r]), mean.tobytes())
                                for cid, r, mean in zip(class_ids, rows.tolist(), means, strict=True)])
            db.execute("INSERT OR REPLACE INTO versions (space, version, dim, epoch) VALUES (?, ?, ?, ?)",
                       (space, memory.global_version, memory.dim or 0, memory.global_epoch))

    def _write_local(self, db: sqlite3.Connection, space: str, memory: PrototypeMemory) -> None:
        local = memory.local
        db.execute("DELETE FROM local WHERE space = ?", (space,))
        db.executemany("INSERT INTO local VALUES (?, ?, ?, ?)",
                       [(space, local.class_ids[r], int(local.counts[r]), local.sums[r].astype("<f8").tobytes())
                        for r in local.live_rows().tolist()])
        db.execute("INSERT INTO versions (space, version, dim, epoch) VALUES (?, ?, ?, ?) ON CONFLICT(space) "
                   "DO UPDATE SET dim = excluded.dim", (space, memory.global_version, memory.dim or 0,
                                                        memory.global_epoch))

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
