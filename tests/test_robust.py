"""Robust merge: count caps, outlier and norm checks, trimmed mean / median over clients, served by Pull per space."""

from pathlib import Path

import numpy as np
import pytest
from helpers import start_server

from fedrecon.client.recon_client import ReconClient
from fedrecon.proto.payloads import Deltas
from fedrecon.server.robust import RobustConfig, RobustMerge, keep_mask, robust_class
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore

RNG = np.random.default_rng(3)
HONEST = np.array([1.0, -2.0, 0.5, 3.0]) + RNG.normal(scale=0.05, size=(6, 4))


def test_outliers_are_dropped_and_honest_clients_kept() -> None:
    for bad in (HONEST[0] * 25, -HONEST[0], RNG.normal(scale=10, size=4)):
        means = np.vstack([HONEST, bad])
        keep = keep_mask(means, RobustConfig())
        assert keep[:6].all() and not keep[6]
    assert keep_mask(HONEST, RobustConfig()).all()


def test_count_cap_limits_inflated_counts() -> None:
    counts = np.array([5, 5, 5, 10**9])
    means = np.vstack([HONEST[:3], HONEST[3] + 0.01])  # plausible mean, absurd count
    total, mean, keep = robust_class(counts, means, RobustConfig(estimator="mean", count_cap=5))
    assert total == 20 and keep.all()
    np.testing.assert_allclose(mean, means.mean(axis=0))


@pytest.mark.parametrize("estimator", ["trimmed", "median", "mean"])
def test_estimators_resist_one_poisoned_client(estimator: str) -> None:
    counts = np.array([4] * 6 + [1000])
    means = np.vstack([HONEST, -40 * HONEST[0]])
    _, mean, _ = robust_class(counts, means, RobustConfig(estimator=estimator, count_cap=10))
    assert np.linalg.norm(mean - HONEST.mean(axis=0)) < 0.1
    plain = (counts[:, None] * means).sum(0) / counts.sum()
    assert np.linalg.norm(plain - HONEST.mean(axis=0)) > 10


def test_few_contributors_fall_back_to_a_space_level_norm_check() -> None:
    means = np.array([[1.0, 0.0], [50.0, 0.0]])
    _, mean, keep = robust_class(np.array([3, 3]), means, RobustConfig(), reference_norm=1.0)
    assert keep.tolist() == [True, False] and mean.tolist() == [1.0, 0.0]
    _, _, keep = robust_class(np.array([3]), np.array([[50.0, 0.0]]), RobustConfig(), reference_norm=1.0)
    assert keep.tolist() == [True]  # never drops every contributor


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="estimator"):
        RobustConfig(estimator="mode")
    with pytest.raises(ValueError, match="trim"):
        RobustConfig(trim=0.5)


def _fill(store: PrototypeStore, space: str, seq: int = 1) -> None:
    for i, mean in enumerate(HONEST):
        store.push(f"h{i}", seq, space, Deltas(["a", "b"], np.array([3, 3]), np.vstack([mean, mean + 1])))
    store.push("evil", seq, space, Deltas(["a", "b"], np.array([10**6, 10**6]), np.vstack([-30 * HONEST[0]] * 2)))


def test_pull_is_robust_only_for_configured_spaces() -> None:
    with PrototypeStore(None, merge_rule=RobustMerge({"robust": RobustConfig(count_cap=3)})) as store, \
            PrototypeStore(None) as reference:
        _fill(store, "robust")
        _fill(store, "plain", seq=2)
        _fill(reference, "plain")
        robust, plain = store.pull("robust"), store.pull("plain")
        assert robust.counts.tolist() == [18, 18]
        assert np.linalg.norm(robust.means[0] - HONEST.mean(axis=0)) < 0.1
        assert np.linalg.norm(plain.means[0] - HONEST.mean(axis=0)) > 10
        np.testing.assert_array_equal(plain.means, reference.pull("plain").means)
        version = store.version
        store.revoke("evil")
        changed = store.pull("robust", since=version)
        assert changed.class_ids == ["a", "b"] and changed.counts.tolist() == [18, 18]


def test_server_serves_robust_means() -> None:
    store = PrototypeStore(None)
    _fill(store, "s")
    server = serve(ServerConfig(insecure=True, robust={"*": RobustConfig(estimator="median", count_cap=3)}), store)
    try:
        with ReconClient(server.address, "reader", timeout=5) as client:
            pulled = client.pull("s", dtype="float64")
        np.testing.assert_allclose(pulled.means[0], np.median(HONEST, axis=0))
        assert pulled.counts.tolist() == [18, 18]
    finally:
        server.stop(grace=1)


def test_cli_server_robust_options(tmp_path: Path) -> None:
    process, address = start_server(tmp_path / "s.db", "--robust", "*", "--robust-estimator", "median",
                                    "--robust-count-cap", "3")
    try:
        for i, mean in enumerate(HONEST):
            with ReconClient(address, f"h{i}", timeout=10) as client:
                client.push("s", ["a"], [3], mean[None], dtype="float64")
        with ReconClient(address, "evil", timeout=10) as client:
            client.push("s", ["a"], [10**6], -30 * HONEST[:1], dtype="float64")
            pulled = client.pull("s", dtype="float64")
        np.testing.assert_allclose(pulled.means[0], np.median(HONEST, axis=0))
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_flower_rounds_get_the_robust_merge_through_the_store() -> None:
    """The Flower strategy pulls through the store, so a store's robust rule reaches Flower clients too."""
    from fedrecon.proto.flower_records import read_prototypes
    from fedrecon.server.flower import PrototypeAveraging
    from fedrecon.server.flower_plan import plan_missions

    rule = RobustMerge({"*": RobustConfig(estimator="median", count_cap=3)})
    with PrototypeStore(None, merge_rule=rule) as store:
        _fill(store, "s")
        plan = plan_missions([f"c{i}" for i in range(6)], [6] * 6, clients=1, rounds=1, ways=2, shots=3, queries=2,
                             seed=0)
        config: dict = {}
        record = PrototypeAveraging(store, plan, "s", dtype="float64")._sync(0, config)
        ids, counts, means = read_prototypes(record, config["global-classes"])
    assert ids == ["a", "b"] and counts.tolist() == [18, 18]
    np.testing.assert_allclose(means[0], np.median(HONEST, axis=0))


def test_flower_run_config_chooses_the_merge_rule() -> None:
    """`robust` in the Flower run config gives the run's store the robust rule; without it the plain one."""
    from fedrecon.server.flower_app import FlowerSettings
    from fedrecon.server.merge import MergeRule

    rule = FlowerSettings(robust="a, b", robust_estimator="median", robust_count_cap=3).merge_rule()
    assert isinstance(rule, RobustMerge) and sorted(rule.spaces) == ["a", "b"]
    assert rule.spaces["a"] == RobustConfig("median", count_cap=3)
    assert type(FlowerSettings().merge_rule()) is MergeRule
