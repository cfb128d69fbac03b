"""The "unknown" answer: an image far from every prototype belongs to no class this client knows.

Only prototypes travel (no per-example spread), so the threshold is calibrated from how the classes lie:
the `auto` rule takes, for each known class, the squared distance to its nearest other prototype, and answers
`unknown` when an image's squared distance to its nearest prototype exceeds `AUTO_FACTOR` times their median.
AUTO_FACTOR was chosen on Omniglot's background alphabets (95% of known-class drawings accepted) and measured
once on `images_evaluation` (`python -m fedrecon.benchmarks.unknown`; docs/experiments.md, "Unknown").
"""

from __future__ import annotations

import numpy as np

from fedrecon.client.memory import Prediction
from fedrecon.proto.prototypes import ClassRows, nearest

AUTO_FACTOR = 1.06
UNKNOWN = "unknown"


def nearest_other(means: np.ndarray) -> np.ndarray:
    """Each prototype's squared distance to its nearest other prototype (float64, one per row)."""
    found = nearest(means, means, k=2)  # itself, then its nearest other (or the other way round on a tie)
    itself = found.rows[:, 0] == np.arange(len(means))
    return np.where(itself, found.distances[:, 1], found.distances[:, 0])


def auto_threshold(table: ClassRows, factor: float = AUTO_FACTOR) -> float:
    """`factor` x the median squared distance from each known class's prototype to its nearest other one."""
    rows = table.live_rows()
    if len(rows) < 2:
        raise ValueError(f"--unknown auto needs at least 2 known classes to calibrate (this client knows "
                         f"{len(rows)}); give a squared distance instead, e.g. --unknown 25")
    return float(factor * np.median(nearest_other(table.means(rows))))


def parse_threshold(text: str) -> str | float:
    """`auto`, or a positive squared distance; ValueError otherwise."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or not np.isfinite(value):
        raise ValueError(f"--unknown must be 'auto' or a positive squared distance, got {text!r}")
    return value


def with_unknown(predictions: list[Prediction], threshold: float) -> list[Prediction]:
    """Predictions whose distance exceeds `threshold` become `unknown`, the nearest class listed first after it."""
    out = []
    for p in predictions:
        if p.distance > threshold:
            out.append(Prediction(UNKNOWN, p.distance, [(p.label, p.distance), *p.alternatives]))
        else:
            out.append(p)
    return out
