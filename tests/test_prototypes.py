"""Prototype math: merged means equal the centralised mean whatever the order, split or revisits."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecon.proto.payloads import Deltas
from fedrecon.proto.prototypes import PrototypeTable, nearest
from fedrecon.server.store import PrototypeStore

DIM = 6

# A contribution: (client, class, number of examples, seed for their values). Each becomes one delta.
contributions = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(1, 7), st.integers(0, 2**16)), min_size=1, max_size=25
)


def _examples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=10.0, size=(count, DIM))


@settings(max_examples=60, deadline=None)
@given(contributions, st.randoms(use_true_random=False))
def test_store_merge_equals_centralised_mean(items, rnd) -> None:
    rnd.shuffle(items)
    store = PrototypeStore()  # in-memory: same validation and merge code as the durable store
    seqs: dict[int, int] = {}
    central: dict[str, list[np.ndarray]] = {}
    for client, cls, count, seed in items:
        x = _examples(count, seed)
        central.setdefault(f"c{cls}", []).append(x)
        seqs[client] = seqs.get(client, 0) + 1
        store.push(f"client{client}", seqs[client], "space", Deltas([f"c{cls}"], [count], x.mean(0, keepdims=True)))
    pulled = store.pull("space")
    for class_id, count, mean in zip(pulled.class_ids, pulled.counts, pulled.means, strict=True):
        everything = np.concatenate(central[class_id])
        assert count == len(everything)
        np.testing.assert_allclose(mean, everything.mean(0), rtol=0, atol=1e-9)
    assert sorted(pulled.class_ids) == sorted(central)


def test_duplicates_within_one_call_and_revisits() -> None:
    table = PrototypeTable()
    table.add_examples(["a", "b", "a"], np.array([[0.0, 0.0], [5.0, 5.0], [2.0, 4.0]]))
    table.add(["a"], [2], np.array([[4.0, 4.0]]))
    _, count = table.get("a")
    assert count == 4
    np.testing.assert_allclose(table.means(table.rows(["a"], create=False)), [[2.5, 3.0]])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5), st.integers(0, 2**16)), min_size=1, max_size=60))
def test_one_call_with_repeated_classes_is_bit_for_bit_one_call_per_row(rows) -> None:
    """A store batch adds every push of a class in one call; the sums must be exactly those of adding them
    one by one, in order (a restart replays the log push by push and must reach the same bits). Pushes add
    counts >= 1, so no class empties (and has its residue cleared) in the middle of a batch."""
    ids = [f"c{cls}" for cls, _, _ in rows]
    counts = np.array([count for _, count, _ in rows])
    sums = np.stack([np.random.default_rng(seed).normal(scale=10.0 ** (seed % 7), size=DIM) for *_, seed in rows])
    versions = np.arange(1, len(rows) + 1)
    together, one_by_one = PrototypeTable(DIM), PrototypeTable(DIM)
    together.add_sums(ids, counts, sums, versions)
    for i in range(len(rows)):
        one_by_one.add_sums(ids[i:i + 1], counts[i:i + 1], sums[i:i + 1], int(versions[i]))
    assert together.class_ids == one_by_one.class_ids
    assert together.sums.tobytes() == one_by_one.sums.tobytes()
    assert together.counts.tolist() == one_by_one.counts.tolist()
    assert together.versions.tolist() == one_by_one.versions.tolist()


def test_removed_class_is_exactly_empty() -> None:
    table = PrototypeTable(3)
    table.add(["a"], [3], np.array([[0.1, 0.2, 0.3]]))
    sums = table.sums.copy()
    table.add_sums(["a"], [-3], -sums)
    assert table.counts.tolist() == [0] and not table.sums.any() and len(table.live_rows()) == 0


def test_nearest_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    q, p = rng.normal(size=(50, 16)), rng.normal(size=(30, 16))
    brute = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(nearest(q, p, k=len(p)).distances, np.sort(brute, axis=1), atol=1e-9)
    assert (nearest(q, p).rows[:, 0] == brute.argmin(1)).all()
    top = nearest(q, p, k=3)
    assert (top.rows == np.argsort(brute, axis=1, kind="stable")[:, :3]).all()
    np.testing.assert_allclose(top.distances, np.take_along_axis(brute, top.rows, 1), atol=1e-9)
    # in blocks of 1 and 7 queries (distance rows of 30 prototypes: 240 bytes each): the same answers
    for block in (1, 7 * 240, 7 * 240 + 239):
        assert (nearest(q, p, block_bytes=block).rows[:, 0] == brute.argmin(1)).all()
        assert (nearest(q, p, k=3, block_bytes=block).rows == top.rows).all()


def test_dim_mismatch_raises() -> None:
    table = PrototypeTable(4)
    try:
        table.add(["a"], [1], np.zeros((1, 5)))
    except ValueError as error:
        assert "dim 5" in str(error)
    else:
        raise AssertionError("dim mismatch accepted")


def test_float32_means_are_the_float64_means_rounded_once() -> None:
    """Pulls in float32 get their means straight from the float64 sums: the same bits as converting after."""
    rng = np.random.default_rng(3)
    table = PrototypeTable(DIM)
    table.add_sums([f"c{i}" for i in range(500)], rng.integers(0, 2**40, 500),
                   rng.normal(size=(500, DIM)) * 10.0 ** rng.uniform(-20, 20, (500, 1)))
    rows = rng.permutation(500)[:300]
    for chosen in (None, rows):
        wide = table.means(chosen)
        narrow = table.means(chosen, np.float32)
        assert narrow.dtype == np.float32 and narrow.tobytes() == wide.astype(np.float32).tobytes()
