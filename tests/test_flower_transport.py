"""`fedrecon experiment ... --transport flower`: the runner's fedrecon method over Flower messages must give
the same prototypes and accuracies as the in-process transport for the same seed."""

from __future__ import annotations

import pytest
import ray  # noqa: F401 - required: the Simulation Engine runs on it

from fedrecon.experiments.runner import load_config, run_experiment
from fedrecon.experiments.transports import TRANSPORTS, make_transport


def small_config(transport: str, cache) -> dict:
    """glyphs-fed shrunk to 2 clients x 2 rounds x 3 classes, fedrecon only, a seeded random Conv4."""
    config = load_config("glyphs-fed")
    config["experiment"].update(runs=1, seed=3, encoder="random", transport=transport, methods=["fedrecon"])
    config["dataset"].update(classes=12, drawings=8, cache_dir=str(cache))
    config["protocol"].update(classes=12, clients=2, classes_per_mission=3, train_shots=4, test_shots=3)
    return config


def test_flower_is_registered_lazily() -> None:
    with pytest.raises(ValueError, match="unknown transport"):
        make_transport("no-such-transport")
    assert "flower" in TRANSPORTS  # the lookup above imported experiments/flower_transport.py


@pytest.mark.slow
def test_runner_flower_equals_inproc(tmp_path) -> None:
    flower = run_experiment(small_config("flower", tmp_path), progress=False)["methods"]["fedrecon"]
    inproc = run_experiment(small_config("inproc", tmp_path), progress=False)["methods"]["fedrecon"]
    assert flower["bytes_up"] > 0 and flower["bytes_down"] > 0
    assert flower["final_accuracy"] == inproc["final_accuracy"]
    assert flower["curve"] == inproc["curve"]
    assert flower["server_curve"] == inproc["server_curve"]
