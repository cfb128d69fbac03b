"""Data-set helpers for experiments (data sets: `fedrecon.client.data.load_dataset`; encoders:
`fedrecon.client.encoder.load_encoder_spec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrecon.client.data import ImageSet
from fedrecon.client.data.images import to_float


def fed_recon_class_order(spec: dict[str, Any], data_dir: Path | None) -> list[str]:
    """WordNet ids in the order of `fed-recon-classes.txt` (first half base, second half field)."""
    from fedrecon.client.data.mini_imagenet import read_class_list

    path = spec.get("class_list")
    candidates = [Path(path)] if path else []
    for d in (spec.get("csv_dir"), data_dir):
        if d:
            candidates.append(Path(d) / "fed-recon-classes.txt")
    for c in candidates:
        if c.is_file():
            return [wnid for wnid, _ in read_class_list(c)]
    raise FileNotFoundError(f"fed-recon-classes.txt not found (looked at {[str(c) for c in candidates]}); "
                            "set dataset.class_list or dataset.csv_dir")


def class_counts(data: ImageSet) -> dict[str, int]:
    """Images per class."""
    counts = np.bincount(data.labels, minlength=len(data.class_ids))
    return {cid: int(n) for cid, n in zip(data.class_ids, counts, strict=True)}


def take(data: ImageSet, class_id: str, idx: np.ndarray) -> np.ndarray:
    """Float32 [0, 1] images `idx` (positions within the class) of one class."""
    return to_float(data.pixels[data.indices(class_id)[np.asarray(idx, dtype=np.int64)]])
