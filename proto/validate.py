"""The one validation of per-class deltas (`Deltas`): shapes, ids, counts and values, for every caller.

The codec validates what it decodes, the store what is pushed to it (a batch at a time), Flower records
what they unpack and prototype tables what is added to them, all with these rules. A caller names the
exception its own callers expect (`error`); the text is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedrecon.proto.limits import MAX_ABS_SUM, MAX_COUNT, Limits
from fedrecon.proto.payloads import Deltas

Error = Callable[[str], Exception]


class InvalidDeltas(ValueError):
    """Deltas that break the rules; the text says which field and why."""


def text_problem(name: str, value: str, limits: Limits) -> str | None:
    """What is wrong with a name (empty, a NUL, longer than `max_class_id_bytes` in UTF-8), or None."""
    if not value:
        return f"{name} must not be empty"
    if "\x00" in value:  # PostgreSQL text cannot hold NUL: refused on every backend, so they agree
        return f"{name} must not contain NUL characters"
    if len(value) * 4 > limits.max_class_id_bytes and len(value.encode()) > limits.max_class_id_bytes:
        return f"{name} is longer than {limits.max_class_id_bytes} bytes (UTF-8)"
    return None


def check_text(name: str, value: str, limits: Limits, error: Error = InvalidDeltas) -> None:
    """Raise `error` for a bad name (see `text_problem`)."""
    if problem := text_problem(name, value, limits):
        raise error(problem)


def shape_problem(deltas: Deltas) -> str | None:
    """Means not a matrix, or lengths of ids, counts and mean rows that differ; None if the shapes fit."""
    class_ids, counts, means = deltas
    if means.ndim != 2:
        return f"means must be 2-D (classes x dim), got shape {means.shape}"
    n = len(class_ids)
    if counts.shape != (n,) or means.shape[0] != n:
        return f"{n} class ids, {len(counts)} counts and {means.shape[0]} mean rows: their lengths differ"
    return None


def _ids_problem(class_ids: list[str], limits: Limits | None) -> str | None:
    """Ids that are not strings, break the text limits, or repeat."""
    if set(map(type, class_ids)) - {str}:  # one C-level pass for the common case
        return f"class_id {next(c for c in class_ids if not isinstance(c, str))!r} is not a string"
    if limits is not None and class_ids:
        lengths = list(map(len, class_ids))  # UTF-8 is at most 4 bytes a character; one scan finds a NUL
        if min(lengths) == 0 or max(lengths) * 4 > limits.max_class_id_bytes or "\x00" in "".join(class_ids):
            for class_id in class_ids:
                if problem := text_problem("class_id", class_id, limits):
                    return problem
    if len(set(class_ids)) != len(class_ids):
        seen: set[str] = set()
        return next(f"class_id {c!r} appears more than once" for c in class_ids if c in seen or seen.add(c))
    return None


def _structure_problem(deltas: Deltas, limits: Limits | None) -> str | None:
    """Shapes, push limits (with `limits`) and ids: everything but the numbers."""
    if problem := shape_problem(deltas):
        return problem
    n = len(deltas.class_ids)
    if limits is not None:
        if n == 0:
            return "a push needs at least one class"
        if n > limits.max_classes_per_push:
            return f"{n} classes in one push; the limit is {limits.max_classes_per_push}"
        if deltas.means.shape[1] > limits.max_dim:
            return f"dim {deltas.means.shape[1]} exceeds the limit {limits.max_dim}"
    return _ids_problem(deltas.class_ids, limits)


def _count_problem(deltas: Deltas, floor: int) -> str | None:
    """A count below `floor` or above MAX_COUNT."""
    counts = deltas.counts
    if not len(counts):
        return None
    if counts.min() < floor:  # a wire count of 2**63 or more reads as negative here
        bad = int(np.argmin(counts))
        return (f"count of class {deltas.class_ids[bad]!r} is {counts[bad]}; each count must be >= {floor} and "
                f"<= {MAX_COUNT}")
    if counts.max() > MAX_COUNT:
        return f"counts must be <= {MAX_COUNT}"
    return None


def _value_problem(top: float, bound: bool) -> str | None:
    """The refusal for the largest |count * mean| (`bound`) or |mean| of some deltas."""
    finite = bool(np.isfinite(top))
    if (top <= MAX_ABS_SUM) if bound else finite:
        return None
    if finite:
        return f"|count * mean| must be <= {MAX_ABS_SUM:g} (means must be finite and bounded)"
    return "means hold NaN or Inf; every mean must be finite"


def _number_problems(group: list[Deltas], bound: bool, floor: int) -> list[str | None]:
    """Counts and values of deltas of one dim: settled by bounds of the whole group in the common case (a few
    numpy calls, not several per push); a group that fails them is checked one by one."""
    counts = np.concatenate([d.counts for d in group]) if len(group) > 1 else group[0].counts
    means = np.concatenate([d.means for d in group]) if len(group) > 1 else group[0].means
    if not means.size:
        return [_count_problem(d, floor) for d in group]
    top_count = int(counts.max())
    with np.errstate(over="ignore", invalid="ignore"):
        top_mean = float(np.maximum(means.max(), -means.min()))  # NaN propagates and fails the comparison
        if counts.min() >= floor and top_count <= MAX_COUNT and _value_problem(top_mean * (top_count if bound else 1),
                                                                               bound) is None:
            return [None] * len(group)
        return [_count_problem(d, floor) or _single_value_problem(d, bound) for d in group]


def _single_value_problem(deltas: Deltas, bound: bool) -> str | None:
    """The values of one deltas whose counts are in range."""
    if not deltas.means.size:
        return None
    top_mean = np.maximum(deltas.means.max(axis=1), -deltas.means.min(axis=1)).astype(np.float64)
    return _value_problem(float((top_mean * deltas.counts).max() if bound else top_mean.max()), bound)


def problems(batch: Sequence[Deltas], limits: Limits | None = None, *, zero_counts: bool = False
             ) -> list[str | None]:
    """The first problem of each deltas of a batch, None where it is valid (see `validate`)."""
    out = [_structure_problem(deltas, limits) for deltas in batch]
    by_dim: dict[int, list[int]] = {}
    for i, deltas in enumerate(batch):
        if out[i] is None:
            by_dim.setdefault(deltas.means.shape[1], []).append(i)
    for indices in by_dim.values():
        found = _number_problems([batch[i] for i in indices], limits is not None, 0 if zero_counts else 1)
        for i, problem in zip(indices, found, strict=True):
            out[i] = problem
    return out


def validate(deltas: Deltas, limits: Limits | None = None, *, zero_counts: bool = False,
             error: Error = InvalidDeltas) -> Deltas:
    """`deltas` if valid, else raise `error` naming the problem.

    Always: means a matrix, as many counts and mean rows as class ids, string ids each once, counts in
    1..MAX_COUNT (0 allowed with `zero_counts`: a pulled class whose every contribution was revoked), finite
    means. With `limits` the deltas are a push: at least one class, at most `max_classes_per_push`, dim at
    most `max_dim`, ids within the text limits, and |count * mean| <= MAX_ABS_SUM (sums never overflow)."""
    if problem := problems([deltas], limits, zero_counts=zero_counts)[0]:
        raise error(problem)
    return deltas
