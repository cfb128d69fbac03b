"""`fedrecon experiment ... --transport flower`: the runner's fedrecon method over Flower messages must give
the same prototypes and accuracies as the in-process transport for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray")

from fedrecon.experiments.runner import load_config, run_experiment  # noqa: E402
from fedrecon.experiments.transports import TRANSPORTS, make_transport  # noqa: E402


def small_config(transport: str, cache) -> dict:
    """glyphs-fed shrunk to 2 clients x 2 rounds x 3 classes, fedrecon only, a seeded random Conv4."""
    config = load_config("glyphs-fed")
    config["experiment"].update(runs=1, seed=3, encoder="random", transport=transport, methods=["fedrecon"])
    config["dataset"].update(classes=12, drawings=8, cache_dir=str(cache))
    config["protocol"].update(classes=12, clients=2, classes_per_mission=3, train_shots=4, test_shots=3)
    return config


def test_flower_is_registered_lazily() -> None:
    with make_transport("flower", {"clients": 2}) as transport:
        assert "flower" in TRANSPORTS and transport.name == "flower"
        rng = np.random.default_rng(0)
        means = rng.normal(size=(2, 4))
        version, nbytes = transport.push("a", "space", ["x", "y"], np.array([2, 3]), means)
        assert version == 1 and nbytes > 0
        transport.push("b", "space", ["x"], np.array([2]), np.zeros((1, 4)))
        pulled, _ = transport.pull("c", "space", 0)
        assert sorted(pulled.class_ids) == ["x", "y"] and pulled.version == 2
        x = pulled.class_ids.index("x")
        assert pulled.counts[x] == 4
        np.testing.assert_allclose(pulled.means[x], means[0].astype(np.float32) / 2, rtol=1e-6)
        later, _ = transport.pull("c", "space", 2)
        assert later.class_ids == []


def test_runner_flower_equals_inproc(tmp_path) -> None:
    flower = run_experiment(small_config("flower", tmp_path), progress=False)["methods"]["fedrecon"]
    inproc = run_experiment(small_config("inproc", tmp_path), progress=False)["methods"]["fedrecon"]
    assert flower["final_accuracy"] == inproc["final_accuracy"]
    assert flower["curve"] == inproc["curve"]
    assert flower["server_curve"] == inproc["server_curve"]
