"""Merge rules: how a store turns what clients contributed into the prototypes its pulls answer.

The default is the plain count-weighted mean, which the merged tables already hold. A rule that looks at
each client's contribution separately (`robust.RobustMerge`) overrides the one hook, `merge`, the way a
Flower strategy overrides `aggregate_fit`. The stored sums never change, so a rule can be switched freely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from fedrecon.proto.payloads import Snapshot

Contributions = list[tuple[np.ndarray, np.ndarray]]  # per client: (counts, float64 sums) of the pulled classes


class MergeRule:
    """The plain count-weighted mean: a pull is the merged table as it is."""

    spaces: Mapping[str, object] = {}  # the spaces this rule merges otherwise than plainly (Admin reports them)

    def merge(self, plain: Snapshot, contributions: Callable[[], Contributions]) -> Snapshot:
        """The pull to answer, from the plain one and (called only if needed) each client's contributions to its
        classes; the store calls it under its lock, so both are of the same version."""
        return plain
