"""A client's local prototype memory: un-pushed local deltas plus the last pulled global table.

Classification runs against their union: a class known globally and also learned locally since the
last push gets the exact combined mean `(global_sum + local_sum) / (global_count + local_count)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrecon.proto.prototypes import PrototypeTable, nearest_prototype


class PrototypeMemory:
    """Local deltas not yet pushed, and the global prototypes as of `global_version`."""

    def __init__(self, dim: int | None = None) -> None:
        self.local = PrototypeTable(dim)
        self.global_table = PrototypeTable(dim)
        self.global_version = 0

    @property
    def dim(self) -> int | None:
        """Embedding width once known."""
        return self.local.dim or self.global_table.dim

    def add_examples(self, class_ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Learn from embedded examples (one class id per row): running float64 sums and counts."""
        self.local.add_examples(class_ids, embeddings)

    def pending(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The deltas not yet pushed: (class_ids, counts, means)."""
        rows = self.local.live_rows()
        return [self.local.class_ids[r] for r in rows], self.local.counts[rows].copy(), self.local.means(rows)

    def mark_pushed(self) -> None:
        """Forget the local deltas once the server acknowledged them (they come back in pulls)."""
        self.local = PrototypeTable(self.local.dim)

    def apply_pull(self, class_ids: Sequence[str], counts: np.ndarray, means: np.ndarray, version: int) -> None:
        """Replace the pulled classes' global (count, mean) with the server's merged values."""
        if len(class_ids):
            counts = np.asarray(counts, dtype=np.int64)
            sums = np.asarray(means, dtype=np.float64) * counts[:, None]
            self.global_table.set_rows(class_ids, counts, sums, version)
        self.global_version = max(self.global_version, int(version))

    def union(self) -> PrototypeTable:
        """Global table plus local deltas, as one table."""
        table = self.global_table.copy()
        table.merge(self.local)
        return table

    def class_ids(self) -> list[str]:
        """Every class this client can recognise (global and local)."""
        table = self.union()
        return [table.class_ids[r] for r in table.live_rows()]

    def classify(self, embeddings: np.ndarray) -> list[str]:
        """Nearest-prototype class id for each embedding, over the union of global and local classes."""
        table = self.union()
        rows = table.live_rows()
        if len(rows) == 0:
            raise ValueError("classify: this client knows no classes yet")
        return [table.class_ids[r] for r in rows[nearest_prototype(embeddings, table.means(rows))]]
