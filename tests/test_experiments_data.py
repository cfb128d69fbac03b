"""Each protocol end to end at small scale: real Omniglot, and mini-ImageNet on generated images in the real layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedrecon.client.data.mini_imagenet import read_class_list, read_split_csv
from fedrecon.experiments.results import write_all
from fedrecon.experiments.runner import load_config, run_experiment

pytestmark = pytest.mark.data
SMALL = {"epochs": 1, "batch_size": 32}


def _shrink(config: dict, methods: list[str]) -> dict:
    config["experiment"].update({"encoder": "random", "runs": 1, "methods": methods})
    for m in methods:
        if m in config.get("methods", {}):
            config["methods"][m].update(SMALL)
    return config


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory) -> str:
    """Decoded Omniglot pixels cached once for the module's runs."""
    return str(tmp_path_factory.mktemp("omniglot-cache"))


@pytest.mark.slow
def test_omniglot_cil_small(shared_data: Path, omniglot_cache: str, tmp_path: Path) -> None:
    config = _shrink(load_config("omniglot-cil"), ["fedrecon", "centralized", "lower"])
    config["dataset"]["cache_dir"] = omniglot_cache
    config["protocol"].update({"classes": 20, "checkpoints": [5, 10, 20]})
    results = run_experiment(config, shared_data / "omniglot", progress=False)
    write_all(results, tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["dataset"]["name"] == "omniglot:images_evaluation.zip" and doc["dataset"]["classes"] == 659
    fed = doc["methods"]["fedrecon"]
    assert [p[0] for p in fed["curve"]] == [5, 10, 20]
    assert doc["schedules"][0]["train_images"] == 20 * 15 and doc["schedules"][0]["test_images"] == 20 * 5
    assert fed["final_accuracy"] == doc["methods"]["centralized"]["final_accuracy"]
    assert doc["anchors"] == {"paper": [600, 86.0], "ANML": [600, 63.8], "OML": [600, 18.2]}


@pytest.mark.slow
def test_omniglot_fed_non_iid_with_revisits(shared_data: Path, omniglot_cache: str) -> None:
    config = _shrink(load_config("omniglot-fed"), ["fedrecon", "centralized", "icarl"])
    config["dataset"]["cache_dir"] = omniglot_cache
    config["methods"]["icarl"]["memory"] = 48
    config["protocol"].update({"classes": 24, "clients": 3, "classes_per_mission": 2, "non_iid": True,
                               "overlap": 0.3, "revisit": 0.3})
    results = run_experiment(config, shared_data / "omniglot", progress=False)
    fed, cen = results["methods"]["fedrecon"], results["methods"]["centralized"]
    assert fed["curve"][-1][0] == 24
    assert [p[1] for p in fed["curve"]] == [p[1] for p in cen["curve"]]
    rounds = fed["per_run"][0]["rounds"]
    assert all(len(r["clients"]) == 3 for r in rounds)
    assert results["methods"]["icarl"]["bytes_up"] > fed["bytes_up"]  # weights + exemplars vs prototypes


def _image(rng: np.random.Generator, colour: np.ndarray) -> Image.Image:
    pixels = np.clip(colour + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _write_class(root: Path, split: str, wnid: str, n: int, rng: np.random.Generator) -> None:
    folder = root / split / wnid
    folder.mkdir(parents=True)
    colour = rng.integers(0, 256, 3).astype(np.float64)
    for i in range(n):
        _image(rng, colour).save(folder / f"{wnid}{i:08d}.jpg")


def test_mini_imagenet_fed_benchmark_on_generated_images(shared_data: Path, tmp_path: Path) -> None:
    csv_dir = shared_data / "mini-imagenet"
    order = [w for w, _ in read_class_list(csv_dir / "fed-recon-classes.txt")]
    rng = np.random.default_rng(0)
    needed = order[:3] + order[50:53]  # 3 base and 3 field classes, all in one split folder
    for wnid in needed:
        _write_class(tmp_path / "mini", "train", wnid, 16, rng)
    config = _shrink(load_config("mini-imagenet-fed"), ["fedrecon", "centralized"])
    config["dataset"]["csv_dir"] = str(csv_dir)
    config["protocol"].update({"base_classes": 3, "field_classes": 3, "train_per_class": 12, "test_per_class": 4,
                               "clients": 2, "classes_per_mission": 2, "shots": 4})
    results = run_experiment(config, tmp_path / "mini", progress=False)
    fed = results["methods"]["fedrecon"]
    run = fed["per_run"][0]
    assert results["encoder"]["dim"] == 1600 and results["dataset"]["classes"] == 6
    assert run["rounds"][0]["classes_seen"] == 3 and run["rounds"][-1]["classes_seen"] == 6
    assert set(fed["group_curves"]) == {"base", "field"}  # server on base and on reconned field classes
    assert "base" in run["rounds"][0]["groups"] and "field" not in run["rounds"][0]["groups"]
    assert run["rounds"][1]["local"] and fed["local_accuracy"] is not None  # each client after its own update
    assert results["schedules"][0]["train_images"] == 6 * 12  # every field training image used once
    assert fed["final_accuracy"] == results["methods"]["centralized"]["final_accuracy"]


def test_mini_imagenet_cil_on_generated_test_split(shared_data: Path, tmp_path: Path) -> None:
    csv_dir = shared_data / "mini-imagenet"
    rng = np.random.default_rng(1)
    for wnid in list(read_split_csv(csv_dir / "test.csv"))[:4]:
        _write_class(tmp_path / "mini", "test", wnid, 10, rng)
    config = _shrink(load_config("mini-imagenet-cil"), ["fedrecon", "centralized"])
    config["dataset"]["csv_dir"] = str(csv_dir)
    config["experiment"]["runs"] = 2
    config["protocol"].update({"classes": 4, "train_shots": 5, "test_shots": 5, "classes_per_mission": 2})
    results = run_experiment(config, tmp_path / "mini", progress=False)
    fed = results["methods"]["fedrecon"]
    assert fed["runs"] == 2 and [p[0] for p in fed["curve"]] == [2, 4]
    assert results["dataset"]["name"] == "mini-imagenet:test"
