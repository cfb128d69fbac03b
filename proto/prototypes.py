"""The prototype math both sides share: per-class float64 sums and counts, merge, nearest prototype.

A class's prototype is `sum / count`. Adding a delta `(m, mean)` adds `m * mean` to the sum and `m`
to the count, so the merged prototype is the mean over every example ever added, whatever the order
or split. This module is the single implementation of that merge (server store, client memory,
experiments and the Flower strategy all use it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from fedrecon.proto.payloads import Deltas
from fedrecon.proto.validate import shape_problem

DISTANCE_BLOCK_BYTES = 16 * 2**20  # the most distance matrix `nearest` holds at a time


def sums_of(counts: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Per-class float64 sums `count * mean` of deltas (the one place means become sums)."""
    return np.multiply(means, np.asarray(counts, dtype=np.int64)[:, None], dtype=np.float64)  # no float64 copy


def _partial_distances(queries: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """`|p|^2 - 2 q.p` for every (query, prototype): the squared distance less `|q|^2`, as one matrix product."""
    q = np.asarray(queries, dtype=np.float64)
    p = np.asarray(prototypes, dtype=np.float64)
    scores = q @ p.T
    scores *= -2.0
    scores += np.einsum("ij,ij->i", p, p)[None, :]
    return scores


class Nearest(NamedTuple):
    """The `k` nearest prototypes of each query, nearest first: their rows and squared distances (n x k each)."""

    rows: np.ndarray
    distances: np.ndarray


def nearest(queries: np.ndarray, prototypes: np.ndarray, k: int = 1, block_bytes: int = DISTANCE_BLOCK_BYTES
            ) -> Nearest:
    """The nearest class: the `k` nearest prototypes of each query by squared Euclidean distance (the one
    implementation every classifier uses; ties go to the lower row).

    Prototypes are ranked by `|p|^2 - 2 q.p` (`|q|^2` does not change the order); the distances add `|q|^2`
    back. Queries go in blocks whose float64 distance rows fit `block_bytes`, so memory stays flat however many
    queries and classes there are (15,000 queries x 30,000 classes at once would be 3.6 GB)."""
    if len(prototypes) == 0:
        raise ValueError("nearest: no prototypes to classify against")
    q = np.asarray(queries, dtype=np.float64)
    p = np.asarray(prototypes, dtype=np.float64)
    k = max(1, min(k, len(p)))
    step = max(1, block_bytes // (8 * len(p)))
    found = [_nearest_block(q[i : i + step], p, k) for i in range(0, len(q), step)] or [_nearest_block(q, p, k)]
    if len(found) == 1:
        return found[0]
    return Nearest(np.concatenate([f.rows for f in found]), np.concatenate([f.distances for f in found]))


def _nearest_block(q: np.ndarray, p: np.ndarray, k: int) -> Nearest:
    """`nearest` of one block of queries."""
    scores = _partial_distances(q, p)
    rows = scores.argmin(1)[:, None] if k == 1 else np.argsort(scores, axis=1, kind="stable")[:, :k]
    distances = np.take_along_axis(scores, rows, 1)
    distances += np.einsum("ij,ij->i", q, q)[:, None]
    return Nearest(rows, np.maximum(distances, 0.0, out=distances))


def occurrence_rounds(rows: np.ndarray) -> list[np.ndarray]:
    """Positions of `rows` split into rounds in which each row appears at most once: round k holds every
    row's k-th occurrence (one round if no row repeats). Adding round after round adds each row's values in
    their order, bit for bit as `np.add.at` (or one call per value) would, with a few whole-array operations
    instead of numpy's slow per-element loop. Sorting `row * n + position` orders by row, then position."""
    n = len(rows)
    positions = np.arange(n)
    ordered, order = np.divmod(np.sort(rows * n + positions), n)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    if len(starts) == n:
        return [positions]
    rank = positions - np.repeat(starts, np.diff(np.r_[starts, n]))
    by_round = np.sort(rank * n + order) % n
    return np.split(by_round, np.cumsum(np.bincount(rank))[:-1])


class ClassRows:
    """Growable per-class rows: ids, one float64 vector, an integer count and a change version per class (the
    storage `PrototypeTable`, whose vectors are sums, and `MergedTable`, whose vectors are means, share).

    Rows are never removed (a class whose count drops to 0 keeps its row with count 0), so row
    indices stay valid for the table's lifetime.
    """

    def __init__(self, dim: int | None = None, capacity: int = 16) -> None:
        self.dim: int | None = dim
        self.class_ids: list[str] = []
        self.index: dict[str, int] = {}
        self._capacity = max(1, capacity)
        self._vectors = np.zeros((self._capacity, dim or 0), dtype=np.float64)
        self._counts = np.zeros(self._capacity, dtype=np.int64)
        self._versions = np.zeros(self._capacity, dtype=np.int64)
        self._id_bytes = np.zeros(self._capacity, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.class_ids)

    def __contains__(self, class_id: object) -> bool:
        return class_id in self.index

    @property
    def counts(self) -> np.ndarray:
        """Example counts, one per class (a view)."""
        return self._counts[: len(self.class_ids)]

    @property
    def versions(self) -> np.ndarray:
        """Version at which each class last changed (a view)."""
        return self._versions[: len(self.class_ids)]

    @property
    def id_bytes(self) -> np.ndarray:
        """UTF-8 length of each class id (a view; pages are sized by it without encoding every id again)."""
        return self._id_bytes[: len(self.class_ids)]

    def _grow(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        capacity = max(needed, 2 * self._capacity)
        n = min(len(self.class_ids), self._capacity)  # rows() may register ids before growing
        vectors = np.zeros((capacity, self.dim or 0), dtype=np.float64)
        vectors[:n] = self._vectors[:n]
        counts = np.zeros(capacity, dtype=np.int64)
        counts[:n] = self._counts[:n]
        versions = np.zeros(capacity, dtype=np.int64)
        versions[:n] = self._versions[:n]
        id_bytes = np.zeros(capacity, dtype=np.int64)
        id_bytes[:n] = self._id_bytes[:n]
        self._vectors, self._counts, self._versions, self._capacity = vectors, counts, versions, capacity
        self._id_bytes = id_bytes

    def _check_dim(self, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
            self._vectors = np.zeros((self._capacity, dim), dtype=np.float64)
        elif dim != self.dim:
            raise ValueError(f"prototype dim {dim} does not match the table's dim {self.dim}")

    def rows(self, class_ids: Sequence[str], create: bool = True) -> np.ndarray:
        """Row index of each class id; new ids get new rows when `create`, else -1."""
        index = self.index
        found = list(map(index.get, class_ids))  # one C-level pass; the common case is all known
        if None in found:
            if create:
                self._grow(len(self.class_ids) + found.count(None))
            for i, cid in enumerate(class_ids):
                if found[i] is not None:
                    continue
                row = index.get(cid)  # the same new id may appear twice in one call
                if row is None:
                    if not create:
                        found[i] = -1
                        continue
                    row = len(self.class_ids)
                    index[cid] = row
                    self.class_ids.append(cid)
                    self._id_bytes[row] = len(cid.encode())
                found[i] = row
        return np.array(found, dtype=np.int64)

    def set_rows(
        self, class_ids: Sequence[str], counts: np.ndarray, vectors: np.ndarray, versions: np.ndarray | int
    ) -> np.ndarray:
        """Overwrite (not add) the vectors, counts and versions of the given classes; returns the rows."""
        vectors = np.asarray(vectors, dtype=np.float64)
        if len(class_ids) == 0:
            return np.empty(0, dtype=np.int64)
        self._check_dim(vectors.shape[1])
        rows = self.rows(class_ids)
        self._vectors[rows] = vectors
        self._counts[rows] = np.asarray(counts, dtype=np.int64)
        self._versions[rows] = versions
        return rows

    def live_rows(self) -> np.ndarray:
        """Rows whose count is positive (classes that exist)."""
        return np.nonzero(self.counts > 0)[0]

    def changed_since(self, version: int) -> np.ndarray:
        """Rows changed after `version` (includes classes whose count dropped to 0)."""
        return np.nonzero(self.versions > version)[0]

    def means(self, rows: np.ndarray | None = None, dtype: type = np.float64) -> np.ndarray:
        """Prototypes of `rows` (default all) in `dtype`."""
        raise NotImplementedError

    def classify(self, embeddings: np.ndarray) -> list[str]:
        """Class id of the nearest prototype for each embedding (over classes with count > 0)."""
        rows = self.live_rows()
        if len(rows) == 0:
            raise ValueError("classify: the table holds no classes yet")
        return [self.class_ids[r] for r in rows[nearest(embeddings, self.means(rows)).rows[:, 0]]]


class MergedTable(ClassRows):
    """Merged (count, mean) per class as a server answered them: a client's pulled table, kept as means so that
    classifying with it converts nothing."""

    def set_means(
        self, class_ids: Sequence[str], counts: np.ndarray, means: np.ndarray, versions: np.ndarray | int
    ) -> np.ndarray:
        """Overwrite the (count, mean) of the given classes with merged values pulled from a server."""
        return self.set_rows(class_ids, counts, means, versions)

    def means(self, rows: np.ndarray | None = None, dtype: type = np.float64) -> np.ndarray:
        """The merged means of `rows` (default all), in `dtype`; a class with count 0 has zeros."""
        means = self._vectors[: len(self.class_ids)] if rows is None else self._vectors[rows]
        return means.astype(dtype, copy=rows is None)

    def summed(self, *deltas: PrototypeTable) -> PrototypeTable:
        """These merged classes as sums, plus `deltas` added: the exact combined prototype of a class a client
        also learned (or is pushing) since its pull, `(count * mean + sum) / (count + n)`."""
        table = PrototypeTable(self.dim, capacity=max(1, len(self)))
        if len(self):
            table.add_sums(self.class_ids, self.counts, sums_of(self.counts, self.means()), unique=True)
            table._versions[: len(self)] = self.versions
        for other in deltas:
            table.merge(other)
        return table


class PrototypeTable(ClassRows):
    """Per-class float64 sums, integer counts and change versions: where deltas are added (a server's merged
    table, a client's un-pushed local deltas)."""

    @property
    def sums(self) -> np.ndarray:
        """Float64 sums, one row per class (a view; do not resize)."""
        return self._vectors[: len(self.class_ids)]

    def add_sums(
        self, class_ids: Sequence[str], counts: np.ndarray, sums: np.ndarray, version: int | np.ndarray = 0,
        unique: bool = False,
    ) -> np.ndarray:
        """Add raw float64 sums and counts per class (negative values subtract); returns the rows.

        `version` is one version for every row, or one per row (the highest per class is kept).
        `unique`: the caller guarantees no class id appears twice (skips that check).
        """
        sums = np.asarray(sums, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.int64)
        if problem := shape_problem(Deltas(class_ids, counts, sums)):  # type: ignore[arg-type]
            raise ValueError(f"add_sums: {problem}")
        self._check_dim(sums.shape[1])
        rows = self.rows(class_ids)
        rounds = [slice(None)] if unique else occurrence_rounds(rows)
        if len(rounds) == 1:
            self._vectors[rows] += sums
            new_counts = self._counts[rows] + counts
            self._counts[rows] = new_counts
        else:  # the same class twice in one call: add in order, as separate calls would
            for positions in rounds:
                self._vectors[rows[positions]] += sums[positions]
                self._counts[rows[positions]] += counts[positions]
            new_counts = self._counts[rows]
        if np.ndim(version):  # one version per row (several operations applied together): the highest wins
            versions = np.asarray(version, dtype=np.int64)
            for positions in rounds:
                touched = rows[positions]
                self._versions[touched] = np.maximum(self._versions[touched], versions[positions])
        else:
            self._versions[rows] = version
        if not new_counts.all():  # a class removed entirely: drop float residue so it is exactly empty
            self._vectors[rows[new_counts == 0]] = 0.0
        return rows

    def add(
        self, class_ids: Sequence[str], counts: np.ndarray, means: np.ndarray, version: int = 0
    ) -> np.ndarray:
        """Merge deltas `(count, mean)` per class: sum += count * mean, count += count."""
        return self.add_sums(class_ids, counts, sums_of(counts, means), version)

    def add_examples(self, class_ids: Sequence[str], embeddings: np.ndarray, version: int = 0) -> None:
        """Add individual embeddings (one class id per row) to their classes' sums and counts."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        unique, inverse = np.unique(np.asarray(class_ids, dtype=object), return_inverse=True)
        sums = np.zeros((len(unique), embeddings.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, embeddings)
        counts = np.bincount(inverse, minlength=len(unique))
        self.add_sums(list(unique), counts, sums, version)

    def merge(self, other: PrototypeTable, version: int = 0) -> None:
        """Add every class of `other` into this table."""
        if len(other):
            self.add_sums(other.class_ids, other.counts, other.sums, version)

    def means(self, rows: np.ndarray | None = None, dtype: type = np.float64) -> np.ndarray:
        """Prototypes `sum / count`, divided in float64 and rounded once to `dtype` (float32 for the wire: the
        same bits as dividing, then converting); classes with count 0 give zeros."""
        sums = self.sums if rows is None else self._vectors[rows]
        counts = self.counts if rows is None else self._counts[rows]
        divisor = np.where(counts > 0, counts, 1).astype(np.float64)[:, None]
        if rows is not None and dtype == np.float64:  # the gathered rows are a new array: divide in place
            sums /= divisor
            return sums
        return np.divide(sums, divisor, out=np.empty(sums.shape, dtype))

    def get(self, class_id: str) -> tuple[np.ndarray, int]:
        """The (sum, count) of one class; KeyError if unknown."""
        row = self.index[class_id]
        return self._vectors[row].copy(), int(self._counts[row])

    def copy(self) -> PrototypeTable:
        """A deep copy."""
        out = PrototypeTable(self.dim, capacity=max(1, len(self)))
        if len(self):
            out.add_sums(self.class_ids, self.counts, self.sums)
            out._versions[: len(self)] = self.versions
        return out

    def items(self) -> Iterable[tuple[str, np.ndarray, int]]:
        """(class_id, sum, count) for every row."""
        for row, cid in enumerate(self.class_ids):
            yield cid, self._vectors[row], int(self._counts[row])
