"""The store's in-memory state: merged tables per space, contributions per client, client records.

Only the writer changes it (`apply_all`, with committed operations); readers take `lock`. Pulls are
served from it, paged by `paging`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedrecon.proto.limits import MAX_SPACE_EXAMPLES
from fedrecon.proto.payloads import Snapshot
from fedrecon.proto.prototypes import PrototypeTable, sums_of
from fedrecon.server.durable import Operation, TableRow
from fedrecon.server.errors import ClientRecord, ClientStats
from fedrecon.server.paging import REPLY_OVERHEAD, ROW_OVERHEAD, Cursor, page_rows

AuditRow = tuple[int, str, str, str, float]  # version, kind, client_id, actor, at
STATE_FIELDS = ("version", "examples", "spaces", "dims", "contributions", "clients", "dirty_clients")


class Tables:
    """Per-space merged prototypes, per-client contributions and client records, as of `version`."""

    def __init__(self, keep_audit: bool = False) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified after each applied batch
        self.revoked: dict[str, int] = {}  # client -> version of its latest revocation (since start-up)
        self.audit: list[AuditRow] | None = [] if keep_audit else None  # in-memory stores: this run's audit
        self.clear()

    def clear(self) -> None:
        """Empty state at version 0 (before a load)."""
        self.version = 0
        self.examples: dict[str, int] = {}  # exact total count per space (Python ints)
        self.spaces: dict[str, PrototypeTable] = {}
        self.dims: dict[str, int] = {}
        self.contributions: dict[str, dict[str, PrototypeTable]] = {}
        self.clients: dict[str, ClientRecord] = {}
        self.dirty_clients: set[str] = set()  # client records to checkpoint (changed rows are found by version)

    def save(self) -> dict[str, Any]:
        """The state, to `restore` if a reload fails."""
        return {name: getattr(self, name) for name in STATE_FIELDS}

    def restore(self, saved: dict[str, Any]) -> None:
        """Put back a `save`d state."""
        for name, value in saved.items():
            setattr(self, name, value)

    # ----------------------------------------------------------------------------- applying
    def apply_all(self, ops: list[Operation]) -> None:
        """Apply committed operations: each run of pushes as one table update per space and per contributor
        (the same sums in the same order as one by one, so the result is bit for bit the same)."""
        run: list[Operation] = []
        for op in [*ops, None]:
            if op is not None and op.kind == "push":
                run.append(op)
                continue
            if run:
                self._apply_pushes(run)
            run = []
            if op is not None:
                self._apply_revoke(op)

    def _table(self, client_id: str, space: str, dim: int) -> PrototypeTable:
        """The merged table of a space (`client_id` ""), or a client's contributions to it; created if new."""
        tables = self.contributions.setdefault(client_id, {}) if client_id else self.spaces
        table = tables.get(space)
        if table is None:
            table = tables[space] = PrototypeTable(dim)
        return table

    def _apply_pushes(self, ops: list[Operation]) -> None:
        """Apply pushes with one `add_sums` per touched table (global and per contributor)."""
        groups: dict[tuple[str, str], list[Operation]] = {}
        for op in ops:
            groups.setdefault(("", op.space), []).append(op)
            groups.setdefault((op.client_id, op.space), []).append(op)
        for (client_id, space), group in groups.items():
            dim = group[0].deltas.dim
            table = self._table(client_id, space, dim)
            self.dims.setdefault(space, dim)
            sums = [op.sums if op.sums is not None else sums_of(op.deltas.counts, op.deltas.means) for op in group]
            if len(group) == 1:  # one push: its ids are unique, one version for all its rows
                first = group[0]
                table.add_sums(first.deltas.class_ids, first.deltas.counts, sums[0], first.version, unique=True)
                continue
            ids = [class_id for op in group for class_id in op.deltas.class_ids]
            versions = np.repeat([op.version for op in group], [len(op.deltas.class_ids) for op in group])
            table.add_sums(ids, np.concatenate([op.deltas.counts for op in group]), np.concatenate(sums), versions)
        for op in ops:
            self.examples[op.space] = self.examples.get(op.space, 0) + int(op.deltas.counts.sum())
            self.clients[op.client_id] = ClientRecord(op.seq, op.version, len(op.deltas.class_ids), op.digest)
            self.dirty_clients.add(op.client_id)
        self.version = ops[-1].version

    def _apply_revoke(self, op: Operation) -> None:
        """Subtract every contribution of one client from every class (exact unlearning)."""
        if op.kind != "revoke":
            raise ValueError(f"unknown operation kind {op.kind!r}")
        self.revoked[op.client_id] = op.version
        if self.audit is not None:
            self.audit.append((op.version, "revoke", op.client_id, op.actor, op.at))
        for space, table in self.contributions.get(op.client_id, {}).items():
            rows = table.live_rows()
            ids = [table.class_ids[r] for r in rows]
            counts, sums = table.counts[rows].copy(), table.sums[rows].copy()
            self.spaces[space].add_sums(ids, -counts, -sums, op.version)
            table.add_sums(ids, -counts, -sums, op.version)
            self.examples[space] -= int(counts.sum())
        self.version = op.version

    # ----------------------------------------------------------------------------- reading (under `lock`)
    def pull(self, space: str, since: int, cursor: Cursor | None, max_bytes: int, itemsize: int,
             max_id_bytes: int) -> Snapshot:
        """Merged (count, mean) of the classes of `space` changed after `since`: all of them, or one page of
        at most `max_bytes` wire bytes (from `cursor`, or the first page); ids are at most `max_id_bytes` long."""
        table = self.spaces.get(space)
        if table is None:
            return Snapshot(space, self.version, [], np.zeros(0, np.int64),
                            np.zeros((0, self.dims.get(space, 0)), np.float64))
        if cursor is None:
            rows = table.live_rows() if since == 0 else table.changed_since(since)
            per_row = (table.dim or 0) * itemsize + ROW_OVERHEAD + max_id_bytes
            if not max_bytes or len(rows) * per_row + REPLY_OVERHEAD <= max_bytes:  # surely one page
                return self._snapshot(space, table, rows, itemsize=itemsize)
            cursor = Cursor.first(since, self.version)
        rows, token = page_rows(table, cursor, max_bytes or 2**62, itemsize)
        return self._snapshot(space, table, rows, token, itemsize)

    def _snapshot(self, space: str, table: PrototypeTable, rows: np.ndarray, token: str = "",
                  itemsize: int = 8) -> Snapshot:
        """The snapshot of some rows; means already in float32 for a float32 pull (rounded once, as the wire
        would), float64 otherwise (a narrower wire dtype is rounded from float64 by the codec)."""
        dtype = np.float32 if itemsize == 4 else np.float64
        if len(rows) == len(table) and not token:  # every row (the usual full pull): no per-row gathering
            return Snapshot(space, self.version, list(table.class_ids), table.counts.copy(), table.means(dtype=dtype))
        if len(rows) and (np.diff(rows) == 1).all():  # consecutive rows (a table filled in order): one slice
            class_ids = table.class_ids[int(rows[0]):int(rows[-1]) + 1]
        else:
            class_ids = [table.class_ids[r] for r in rows.tolist()]
        return Snapshot(space, self.version, class_ids, table.counts[rows].copy(), table.means(rows, dtype), token)

    def contributions_to(self, space: str, class_ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each contributing client's (counts, float64 sums) for `class_ids` of `space` (zeros where it has none)."""
        out = []
        for tables in self.contributions.values():
            table = tables.get(space)
            if table is None:
                continue
            rows = table.rows(class_ids, create=False)
            safe, present = np.maximum(rows, 0), rows >= 0
            counts = np.where(present, table.counts[safe], 0) if len(table) else np.zeros(len(rows), np.int64)
            sums = np.where(present[:, None], table.sums[safe], 0.0) if len(table) else \
                np.zeros((len(rows), self.dims.get(space, 0)))
            out.append((counts, sums))
        return out

    def client_stats(self) -> list[ClientStats]:
        """Per client: last seq, live classes and examples over every space (sorted by client id)."""
        out = []
        for client_id, record in sorted(self.clients.items()):
            tables = self.contributions.get(client_id, {}).values()
            out.append(ClientStats(client_id, record.last_seq, sum(int((t.counts > 0).sum()) for t in tables),
                                   sum(sum(t.counts.tolist()) for t in tables)))
        return out

    def live_classes(self, client_id: str) -> int:
        """Classes one client currently contributes to, over every space."""
        return sum(int((t.counts > 0).sum()) for t in self.contributions.get(client_id, {}).values())

    def space_info(self) -> list[dict]:
        """Per space: dim, live classes, examples, last change version."""
        spaces = []
        for name, table in sorted(self.spaces.items()):
            live = table.counts > 0
            spaces.append({"space": name, "dim": int(table.dim or 0), "classes": int(live.sum()),
                           "examples": min(self.examples.get(name, 0), MAX_SPACE_EXAMPLES),
                           "version": int(table.versions.max()) if len(table) else 0})
        return spaces

    def changed_rows(self, since: int) -> tuple[list[TableRow], list[TableRow]]:
        """Merged and contribution rows changed after version `since`, as checkpoint rows (sums copied)."""
        classes = [r for space, table in self.spaces.items() for r in _changed_rows(table, since, space)]
        contributions = [r for client_id, tables in self.contributions.items() for space, table in tables.items()
                         for r in _changed_rows(table, since, space, client_id)]
        return classes, contributions


def _changed_rows(table: PrototypeTable, since: int, space: str, client_id: str = "") -> list[TableRow]:
    """Rows of a table changed after version `since`, as checkpoint rows (sums copied)."""
    rows = table.changed_since(since)
    if not len(rows):
        return []
    counts, versions, sums = table.counts[rows].tolist(), table.versions[rows].tolist(), table.sums[rows]
    return [TableRow(space, table.class_ids[r], counts[i], sums[i], versions[i], client_id)
            for i, r in enumerate(rows.tolist())]
