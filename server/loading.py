"""Start-up of a durable store: its `Tables` from the checkpointed rows plus the log after the checkpoint, verified.

What is loaded is checked (checksums, the log's continuity, counts against contributions): a mismatch refuses
to start (DatabaseDamaged), or with `repair` is mended where it can be and logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedrecon.proto.prototypes import PrototypeTable
from fedrecon.server.durable import DatabaseDamaged, TableRow
from fedrecon.server.errors import ClientRecord
from fedrecon.server.log import Log
from fedrecon.server.tables import Tables

log = logging.getLogger("fedrecon.store")


def load_tables(tables: Tables, storage: Log, where: str | Path | None, repair: bool) -> tuple[int, int]:
    """Fill empty `tables` from one snapshot of `storage`; returns (checkpoint version, operations replayed)."""
    tables.dims = storage.load_spaces()
    damaged: list[TableRow] | None = [] if repair else None
    grouped: dict[tuple[str, str], list[TableRow]] = {}
    for name in ("classes", "contributions"):
        for row in storage.load_rows(name, damaged):
            grouped.setdefault((row.client_id, row.space), []).append(row)
    for (client_id, space), rows in grouped.items():
        table = PrototypeTable(tables.dims[space], capacity=len(rows))
        table.set_rows([r.class_id for r in rows], np.array([r.count for r in rows]),
                       np.stack([r.sum for r in rows]), np.array([r.version for r in rows]))
        if client_id:
            tables.contributions.setdefault(client_id, {})[space] = table
        else:
            tables.spaces[space] = table
    for row in damaged or ():
        log.warning("--repair: dropped the damaged row of class %r in space %r%s", row.class_id, row.space,
                    f" of client {row.client_id!r}" if row.client_id else "")
    for client_id, *record in storage.load_clients():
        tables.clients[client_id] = ClientRecord(*record)
    checkpoint = tables.version = int(storage.meta("checkpoint_version") or 0)
    verify_counts(tables, where, repair)
    tables.examples = {space: sum(table.counts.tolist()) for space, table in tables.spaces.items()}
    replayed = 0
    for op in storage.load_log(tables.version):
        if op.version != tables.version + 1:
            raise DatabaseDamaged(f"{where}: the log jumps from version {tables.version} to {op.version}: "
                                  f"operations {tables.version + 1}..{op.version - 1} are missing")
        tables.apply_all([op])
        replayed += 1
    return checkpoint, replayed


def _by_space(tables: Tables) -> dict[str, list[PrototypeTable]]:
    """Every client's contribution table, grouped by space."""
    out: dict[str, list[PrototypeTable]] = {}
    for per_space in tables.contributions.values():
        for space, table in per_space.items():
            out.setdefault(space, []).append(table)
    return out


def verify_counts(tables: Tables, where: str | Path | None, repair: bool) -> None:
    """Each checkpointed class's count equals the sum of its contributors' counts; with `repair`, a class
    that does not (or whose row was damaged) is rebuilt from its contributions."""
    for space, contributed in _by_space(tables).items():
        merged = tables.spaces.setdefault(space, PrototypeTable(tables.dims[space]))
        rows = [merged.rows(table.class_ids) for table in contributed]  # a class missing here is added, count 0
        expected = np.zeros(len(merged), np.int64)
        for table, at in zip(contributed, rows, strict=True):
            np.add.at(expected, at, table.counts)
        wrong = np.nonzero(expected != merged.counts)[0]
        if not len(wrong):
            continue
        first = int(wrong[0])
        if not repair:
            raise DatabaseDamaged(f"{where}: class {merged.class_ids[first]!r} of space {space!r} holds count "
                                  f"{merged.counts[first]} but its contributions add up to {expected[first]} "
                                  f"({len(wrong)} classes disagree); start with --repair to rebuild them from the "
                                  "contributions")
        log.warning("--repair: %d classes of space %r rebuilt from their contributions", len(wrong), space)
        sums = np.zeros((len(merged), merged.dim or 0))
        for table, at in zip(contributed, rows, strict=True):
            np.add.at(sums, at, table.sums)
        merged.set_rows([merged.class_ids[r] for r in wrong.tolist()], expected[wrong], sums[wrong], tables.version)
