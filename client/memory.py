"""A client's local prototype memory: un-pushed local deltas plus the last pulled global table.

Classification runs against their union: a class known globally and also learned locally since the
last push gets the exact combined mean `(global_sum + local_sum) / (global_count + local_count)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrecon.proto.payloads import Deltas
from fedrecon.proto.prototypes import ClassRows, MergedTable, PrototypeTable, nearest


@dataclass(frozen=True)
class Prediction:
    """One query's answer: the nearest class, its squared distance, and the next nearest (label, distance) pairs."""

    label: str
    distance: float
    alternatives: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data."""
        return {"label": self.label, "distance": self.distance,
                "alternatives": [{"label": c, "distance": d} for c, d in self.alternatives]}


def rank(table: ClassRows, embeddings: np.ndarray, k: int = 2) -> list[Prediction]:
    """The `k` nearest classes of each embedding over the table's live classes (`nearest`, squared distances)."""
    rows = table.live_rows()
    if len(rows) == 0:
        raise ValueError("classify: this client knows no classes yet (learn some, or sync with a server)")
    found = nearest(embeddings, table.means(rows), k)
    out = []
    for best, distances in zip(found.rows, found.distances, strict=True):
        ranked = [(table.class_ids[rows[j]], float(d)) for j, d in zip(best, distances, strict=True)]
        out.append(Prediction(ranked[0][0], ranked[0][1], ranked[1:]))
    return out


class PrototypeMemory:
    """Local deltas not yet pushed (float64 sums), and the merged prototypes as of `global_version` (the means
    pulled, kept as they came)."""

    def __init__(self, dim: int | None = None) -> None:
        self.local = PrototypeTable(dim)
        self.global_table = MergedTable(dim)
        self.global_version = 0
        self.global_epoch = ""  # the server epoch `global_version` belongs to (Pull names it with its since)

    @property
    def dim(self) -> int | None:
        """Embedding width once known."""
        return self.local.dim or self.global_table.dim

    def add_examples(self, class_ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Learn from embedded examples (one class id per row): running float64 sums and counts.

        Non-finite embeddings are refused (ValueError): one would make its class unpushable for good."""
        bad = ~np.isfinite(np.asarray(embeddings, dtype=np.float64)).all(axis=1) if len(embeddings) else []
        if np.any(bad):
            first = int(np.argmax(bad))
            raise ValueError(f"{int(np.sum(bad))} of {len(embeddings)} embeddings hold NaN or Inf (the first of class "
                             f"{class_ids[first]!r}); nothing was learned from this batch")
        self.local.add_examples(class_ids, embeddings)

    def pending(self) -> Deltas:
        """The deltas not yet pushed (unpacks as class_ids, counts, means)."""
        rows = self.local.live_rows()
        return Deltas([self.local.class_ids[r] for r in rows], self.local.counts[rows].copy(), self.local.means(rows))

    def mark_pushed(self, class_ids: Sequence[str] | None = None) -> None:
        """Forget the local deltas (of `class_ids`, default all) once pushed: they come back in pulls."""
        self.local = self.without(class_ids).local

    def without(self, class_ids: Sequence[str] | None = None) -> PrototypeMemory:
        """This memory less the local deltas of `class_ids` (default all), as a new memory sharing the global
        table: what the state commits with the pushes that take them, swapped in only after that commit."""
        kept = PrototypeTable(self.local.dim)
        if class_ids is not None:
            gone = set(class_ids)
            rest = [r for r in self.local.live_rows().tolist() if self.local.class_ids[r] not in gone]
            if rest:
                kept.add_sums([self.local.class_ids[r] for r in rest], self.local.counts[rest], self.local.sums[rest])
        return self.with_local(kept)

    def with_local(self, local: PrototypeTable) -> PrototypeMemory:
        """A memory with other local deltas, sharing this one's global table, version and epoch."""
        other = PrototypeMemory(self.dim)
        other.local, other.global_table = local, self.global_table
        other.global_version, other.global_epoch = self.global_version, self.global_epoch
        return other

    def returned(self, class_ids: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The exact local (class ids, counts, float64 sums) of `class_ids`, as a push takes them."""
        rows = self.local.rows(class_ids, create=False)
        return list(class_ids), self.local.counts[rows].copy(), self.local.sums[rows].copy()

    def apply_pull(self, class_ids: Sequence[str], counts: np.ndarray, means: np.ndarray, version: int,
                   epoch: str = "", reset: bool = False) -> None:
        """Replace the pulled classes' global (count, mean) with the server's merged values; `reset` (a full pull
        after the server's history changed, e.g. restored from a backup) replaces the whole table and version."""
        if reset:
            self.global_table = MergedTable(self.dim)
            self.global_version = 0
        if len(class_ids):
            self.global_table.set_means(class_ids, counts, means, version)
        self.global_version = max(self.global_version, int(version))
        self.global_epoch = epoch or self.global_epoch

    def union(self, *extra: PrototypeTable) -> ClassRows:
        """Global table plus local deltas (plus `extra` tables, e.g. a push in flight), as one table to read: the
        pulled table itself while nothing was learned since (its means as pulled, nothing converted)."""
        added = [t for t in (self.local, *extra) if len(t)]
        return self.global_table.summed(*added) if added else self.global_table

    def class_ids(self) -> list[str]:
        """Every class this client can recognise (global and local)."""
        table = self.union()
        return [table.class_ids[r] for r in table.live_rows()]

    def classify(self, embeddings: np.ndarray) -> list[str]:
        """Nearest-prototype class id for each embedding, over the union of global and local classes (the pulled
        means as they are when nothing was learned since)."""
        return self.union().classify(embeddings)
