"""Opt-in robust merge per space: count caps, outlier checks and a robust estimator over clients' means.

The plain merge (count-weighted average, `PrototypeTable`) lets one client with inflated counts or
scaled / random / sign-flipped prototypes move every class it touches. `RobustMerge` is a merge rule of
the store (`merge.MergeRule`): for a space marked robust, pulls (gRPC, Admin export, Flower rounds alike)
are answered from the per-client contributions the store already keeps: each client's count
is capped, client means far from the class's other contributors (distance to the coordinate-wise
median, and norm ratio) are dropped, and the rest are combined by a trimmed mean or a median over
clients (or a capped count-weighted mean, via `PrototypeTable`). Nothing about the stored sums
changes, so switching robust mode off, or revoking a client, stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedrecon.proto.payloads import Snapshot
from fedrecon.proto.prototypes import PrototypeTable, sums_of
from fedrecon.server.merge import Contributions, MergeRule

ESTIMATORS = ("trimmed", "median", "mean")


@dataclass(frozen=True)
class RobustConfig:
    """How one space is merged robustly (see the module doc); 0 switches the cap off."""

    estimator: str = "trimmed"
    trim: float = 0.2
    count_cap: int = 0
    norm_ratio: float = 3.0
    outlier: float = 3.0
    min_clients: int = 3

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"robust estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")
        if self.count_cap < 0 or self.norm_ratio <= 1.0 or self.outlier <= 0 or self.min_clients < 2:
            raise ValueError("count_cap >= 0, norm_ratio > 1, outlier > 0 and min_clients >= 2 are required")


def _capped(counts: np.ndarray, cap: int) -> np.ndarray:
    return np.minimum(counts, cap) if cap > 0 else counts


def keep_mask(means: np.ndarray, config: RobustConfig, reference_norm: float | None = None) -> np.ndarray:
    """Which clients' means to keep for one class (rows of `means`); never drops everyone."""
    k = len(means)
    norms = np.linalg.norm(means, axis=1)
    keep = np.ones(k, dtype=bool)
    if k >= config.min_clients:
        center = np.median(means, axis=0)
        dist = np.linalg.norm(means - center, axis=1)
        scale = max(float(np.median(dist)), 1e-9 * (1.0 + float(np.linalg.norm(center))))
        keep &= dist <= config.outlier * scale
        reference_norm = float(np.median(norms))
    if reference_norm is not None and reference_norm > 0:
        keep &= (norms <= config.norm_ratio * reference_norm) & (norms >= reference_norm / config.norm_ratio)
    return keep if keep.any() else np.ones(k, dtype=bool)


def combine(counts: np.ndarray, means: np.ndarray, config: RobustConfig) -> np.ndarray:
    """The robust estimate of one class from its kept clients' (capped counts, means)."""
    k = len(means)
    if config.estimator == "median" and k >= config.min_clients:
        return np.median(means, axis=0)
    if config.estimator == "trimmed" and k >= config.min_clients:
        cut = int(np.floor(config.trim * k))
        ordered = np.sort(means, axis=0)
        return ordered[cut:k - cut].mean(axis=0)
    table = PrototypeTable(means.shape[1])
    table.add_sums(["c"], [int(counts.sum())], sums_of(counts, means).sum(axis=0, keepdims=True))
    return table.means()[0]


def robust_class(counts: np.ndarray, means: np.ndarray, config: RobustConfig,
                 reference_norm: float | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, kept mask) of one class from its clients' counts (k,) and means (k, dim)."""
    counts = _capped(np.asarray(counts, dtype=np.int64), config.count_cap)
    keep = keep_mask(means, config, reference_norm)
    return int(counts[keep].sum()), combine(counts[keep], means[keep], config), keep


class RobustMerge(MergeRule):
    """Merges the robust spaces from each client's contribution (`robust_class`); others plainly."""

    def __init__(self, spaces: Mapping[str, RobustConfig]) -> None:
        self.spaces = dict(spaces)

    def config(self, space: str) -> RobustConfig | None:
        """The robust settings of a space (`*` applies to every space), or None for a plain merge."""
        return self.spaces.get(space) or self.spaces.get("*")

    def merge(self, plain: Snapshot, contributions: Callable[[], Contributions]) -> Snapshot:
        """Robust means and counts for a robust space (pages included); the plain pull for others."""
        config = self.config(plain.space)
        if config is None:
            return plain
        return self._merge(plain, contributions(), config)

    @staticmethod
    def _merge(plain: Snapshot, per_client: Contributions, config: RobustConfig) -> Snapshot:
        """Each class of `plain` by `robust_class` over the clients that contribute to it."""
        n, dim = len(plain.class_ids), plain.means.shape[1]
        if not per_client or n == 0:
            return plain
        counts = np.stack([c for c, _ in per_client])  # clients x classes
        sums = np.stack([s for _, s in per_client])  # clients x classes x dim
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts[:, :, None]
        live = counts > 0
        all_norms = np.linalg.norm(means[live], axis=-1)
        reference = float(np.median(all_norms)) if all_norms.size else None
        out_counts = np.zeros(n, np.int64)
        out_means = np.zeros((n, dim), np.float64)
        for j in range(n):
            who = live[:, j]
            if not who.any():
                continue
            out_counts[j], out_means[j], _ = robust_class(counts[who, j], means[who, j], config, reference)
        return replace(plain, counts=out_counts, means=out_means)
