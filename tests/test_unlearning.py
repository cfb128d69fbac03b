"""Exact unlearning: after revoking a client, the merged table equals a run in which it never took part (1e-9)."""

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from security_helpers import random_push

from fedrecon.proto.payloads import Deltas
from fedrecon.server.store import PrototypeStore


def _history(seed: int, clients: int, pushes: int) -> list[tuple[str, list[str], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"c{int(rng.integers(clients))}", *random_push(rng)) for _ in range(pushes)]


def _replay(store: PrototypeStore, history, skip: str | None = None) -> None:
    seqs: dict[str, int] = {}
    for client, ids, counts, means in history:
        if client == skip:
            continue
        seqs[client] = seqs.get(client, 0) + 1
        store.push(client, seqs[client], "s", Deltas(ids, counts, means))


def _assert_same(a: PrototypeStore, b: PrototypeStore) -> None:
    pa, pb = a.pull("s"), b.pull("s")
    assert sorted(pa.class_ids) == sorted(pb.class_ids)
    order_a, order_b = np.argsort(pa.class_ids), np.argsort(pb.class_ids)  # row order is arrival order
    assert pa.counts[order_a].tolist() == pb.counts[order_b].tolist()
    if pa.class_ids:  # an empty space has no dim in a store that never saw it
        np.testing.assert_allclose(pa.means[order_a], pb.means[order_b], rtol=0, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clients=st.integers(2, 5), pushes=st.integers(1, 30))
def test_revoke_equals_never_having_taken_part(seed: int, clients: int, pushes: int) -> None:
    history = _history(seed, clients, pushes)
    victim = history[0][0]
    with PrototypeStore(None) as full, PrototypeStore(None) as without:
        _replay(full, history)
        _replay(without, history, skip=victim)
        version = full.version
        full.revoke(victim, actor="test")
        assert full.version == version + 1
        _assert_same(full, without)
        changed = full.pull("s", since=version)
        assert set(changed.class_ids) == set(full.contribution(victim, "s").class_ids)


def test_revocation_is_durable_and_pushes_after_it_count(tmp_path: Path) -> None:
    history = _history(7, 4, 40)
    victim = history[0][0]
    with PrototypeStore(tmp_path / "a.db", checkpoint_every=5) as full:
        _replay(full, history)
        full.revoke(victim, actor="root")
    later = (victim, ["c1", "new"], np.array([2, 3]), np.ones((2, 4)))
    with PrototypeStore(tmp_path / "a.db") as full, PrototypeStore(None) as without:
        _replay(without, history, skip=victim)
        _assert_same(full, without)
        seq = full.client_record(victim).last_seq + 1
        full.push(victim, seq, "s", Deltas(*later[1:]))
        without.push(victim, 1, "s", Deltas(*later[1:]))
        _assert_same(full, without)
