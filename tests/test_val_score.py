"""val_score, the validation-only judge of #26's arms: all-classes accuracy, per-member normalisation, and the
command's paired JSON lines on the real held-out alphabets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_combine import _member

from fedrecon.client.combine import combine
from fedrecon.client.encoder import load_encoder
from fedrecon.experiments import val_score


def test_all_class_accuracy_is_perfect_for_separated_classes_and_low_for_shuffled_labels() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), 20)
    embeddings = rng.normal(size=(30, 16))[labels] * 10 + rng.normal(size=(600, 16))
    assert val_score.all_class_accuracies(embeddings, labels, 15, 5, 3).tolist() == [1.0, 1.0, 1.0]
    assert val_score.all_class_accuracies(embeddings, rng.permutation(labels), 15, 5, 3).mean() < 0.2


def test_each_member_of_a_combined_encoder_is_normalised_on_its_own(tmp_path: Path) -> None:
    combine([str(_member(tmp_path, 1)), str(_member(tmp_path, 2))], tmp_path / "ab.pt", "test")
    enc = load_encoder(tmp_path / "ab.pt", device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    for transform in ("l2", "cl2n"):
        out = val_score.normalised(enc, enc.embed(pixels), transform, pixels)
        np.testing.assert_allclose(np.linalg.norm(out.reshape(8, 2, 64), axis=2), 1.0, rtol=1e-5)
    raw = enc.embed(pixels)
    assert val_score.normalised(enc, raw, "none", pixels) is raw


@pytest.mark.data
def test_the_command_pairs_every_checkpoint_to_the_first(shared_data: Path, capsys) -> None:
    common = ["--data-dir", str(shared_data / "omniglot"), "--val-alphabets", "5", "omniglot-v2", "omniglot-v2"]
    assert val_score.main([*common[:4], "--episodes", "30", *common[4:]]) == 0
    same = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert same[1]["minus_first_pp"] == 0.0 and same[0]["val_20way_1shot"] > 0.9 and same[0]["bytes_per_class"] == 256
    assert val_score.main([*common[:4], "--all-classes", "--splits", "2", *common[4:]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 0.9 < rows[0]["val_all_classes_15shot"] <= 1.0 and rows[1]["minus_first_pp"] == 0.0
