"""Prototype tables as Flower records: what the Flower server and client apps exchange.

A set of per-class prototypes travels as an `ArrayRecord` with two arrays, `counts` (int64, n) and
`means` (n x dim, in the wire dtype), plus the class ids as a `list[str]` in a `ConfigRecord`
(ArrayRecords hold only arrays). Missions and evaluation slices travel as class ids plus image
indices per class, flattened with offsets so they fit a `ConfigRecord`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedrecon.proto.codec import DTYPE_NAMES
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.validate import validate

UNCARRIED_DTYPES = {"bfloat16": "a Flower Array holds numpy's own dtypes only"}  # wire dtypes records refuse


def prototypes_record(counts: np.ndarray, means: np.ndarray, dtype: str = "float32", dim: int = 0) -> ArrayRecord:
    """Pack (counts, means) into an ArrayRecord; means cast to the wire dtype (one of `codec.DTYPE_NAMES`)."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"wire dtype {dtype!r} not supported; expected one of {sorted(DTYPE_NAMES)}")
    if dtype in UNCARRIED_DTYPES:
        raise ValueError(f"wire dtype {dtype!r} cannot travel in a Flower record ({UNCARRIED_DTYPES[dtype]}); "
                         f"use one of {sorted(set(DTYPE_NAMES) - set(UNCARRIED_DTYPES))}")
    means = np.asarray(means, dtype=np.float64)
    if means.size == 0:
        means = means.reshape(0, dim or (means.shape[1] if means.ndim == 2 else 0))
    return ArrayRecord({"counts": Array(np.ascontiguousarray(counts, dtype=np.int64)),
                        "means": Array(np.ascontiguousarray(means.astype(dtype)))})


def read_prototypes(
    record: ArrayRecord, class_ids: Sequence[str], allow_empty: bool = False
) -> Deltas:
    """Unpack (class_ids, int64 counts, float64 means) and check them; `allow_empty`: counts may be 0
    (a pulled class whose every contribution was revoked)."""
    try:
        counts = record["counts"].numpy().astype(np.int64)
        means = record["means"].numpy().astype(np.float64)
    except KeyError as exc:
        raise ValueError(f"prototype record lacks array {exc}; expected 'counts' and 'means'") from None
    deltas = Deltas([str(c) for c in class_ids], counts, means)
    return validate(deltas, zero_counts=allow_empty, error=lambda problem: ValueError(f"prototype record: {problem}"))


@dataclass(frozen=True)
class Assignment:
    """Images to use: class ids and, per class, the indices of its images (a mission or an eval slice)."""

    classes: tuple[str, ...]
    images: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.images):
            raise ValueError(f"assignment: {len(self.classes)} classes but {len(self.images)} index lists")

    @property
    def examples(self) -> int:
        """Number of images assigned."""
        return sum(len(i) for i in self.images)

    def to_config(self, prefix: str) -> dict[str, list[str] | list[int]]:
        """Flatten into ConfigRecord values `<prefix>-classes`, `-index` and `-offsets`."""
        offsets = np.cumsum([0] + [len(i) for i in self.images]).tolist()
        return {f"{prefix}-classes": list(self.classes),
                f"{prefix}-index": [int(v) for idx in self.images for v in idx],
                f"{prefix}-offsets": [int(v) for v in offsets]}

    @classmethod
    def from_config(cls, config: ConfigRecord, prefix: str) -> Assignment:
        """Inverse of `to_config`; a clear error when the keys are missing or inconsistent."""
        try:
            classes = [str(c) for c in config[f"{prefix}-classes"]]  # type: ignore[union-attr]
            index = [int(v) for v in config[f"{prefix}-index"]]  # type: ignore[union-attr]
            offsets = [int(v) for v in config[f"{prefix}-offsets"]]  # type: ignore[union-attr]
        except KeyError as exc:
            raise ValueError(f"message config lacks {exc} (an assignment named {prefix!r})") from None
        if len(offsets) != len(classes) + 1 or offsets[0] != 0 or offsets[-1] != len(index):
            raise ValueError(f"assignment {prefix!r}: offsets {offsets[:4]}... do not fit {len(classes)} classes")
        return cls(tuple(classes), tuple(tuple(index[a:b]) for a, b in zip(offsets, offsets[1:], strict=False)))
