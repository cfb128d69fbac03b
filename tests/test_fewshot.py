"""Few-shot evaluation on the real Omniglot images_evaluation with the shipped weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from fedrecon.client.data.omniglot import load_omniglot
from fedrecon.client.encoder import load_encoder
from fedrecon.experiments import fewshot

pytestmark = pytest.mark.data
# Printed by `fedrecon fewshot --weights omniglot --data-dir ../shared/data/omniglot --ways W --shots 1
# --episodes 1000 --seed S` with the shipped weights; see client/weights/README.md.
RECORDED = Path(__file__).resolve().parents[1] / "client" / "weights" / "fewshot.json"


@pytest.fixture(scope="module")
def evaluation(shared_data: Path):
    return load_omniglot(shared_data / "omniglot", background=False)


def test_episode_accuracies_on_toy_embeddings() -> None:
    labels = np.repeat(np.arange(10), 6)
    emb = np.eye(10)[labels] * 5 + np.random.default_rng(0).normal(0, 0.1, (60, 10))
    acc = fewshot.episode_accuracies(emb, labels, ways=5, shots=1, queries=5, episodes=20)
    assert acc.shape == (20,) and (acc == 1.0).all()
    noise = np.random.default_rng(1).normal(size=(60, 10))
    mean, ci = fewshot.summarize(fewshot.episode_accuracies(noise, labels, 5, 1, 5, 200))
    assert 0.1 < mean < 0.3 and 0 < ci < 0.05  # chance is 20%
    with pytest.raises(ValueError, match="classes"):
        fewshot.episode_accuracies(emb, labels, ways=11, shots=1, queries=5, episodes=1)


def test_shipped_omniglot_weights_5way_1shot(evaluation) -> None:
    result = fewshot.evaluate(load_encoder("omniglot"), evaluation, 5, 1, 15, 200, seed=0)
    assert result["accuracy"] > 0.95 and result["classes"] == 659


def test_cli_prints_json_as_last_line(shared_data: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    fewshot.register(parser)
    args = parser.parse_args(["--weights", "omniglot", "--data-dir", str(shared_data / "omniglot"),
                              "--ways", "20", "--shots", "1", "--episodes", "30"])
    assert fewshot.run(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"accuracy", "ci95", "ways", "shots", "episodes", "fingerprint"} <= set(result)
    assert result["ways"] == 20 and result["episodes"] == 30 and 0.8 < result["accuracy"] <= 1.0
    assert result["fingerprint"] == load_encoder("omniglot").fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("name", list(json.loads(RECORDED.read_text())))
def test_recorded_1000_episode_figures_reproduce(evaluation, name: str) -> None:
    recorded = json.loads(RECORDED.read_text())[name]
    result = fewshot.evaluate(load_encoder("omniglot"), evaluation, recorded["ways"], recorded["shots"],
                              recorded["queries"], recorded["episodes"], seed=recorded["seed"])
    assert result["fingerprint"] == recorded["fingerprint"]
    assert abs(result["accuracy"] - recorded["accuracy"]) < 1e-3
