"""Pretraining: a tiny glyph run writes a loadable checkpoint, resuming reproduces an uninterrupted run,
and the shipped glyph weights clearly beat an untrained Conv4 on held-out glyph classes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrecon.client.data.glyphs import make_glyphs
from fedrecon.client.encoder import Encoder, load_encoder, read_checkpoint
from fedrecon.experiments import pretrain
from fedrecon.experiments.fewshot import evaluate


def _args(out: Path, cache: Path, episodes: int, resume: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pretrain.register(parser)
    argv = ["--dataset", "glyphs", "--out", str(out), "--glyph-classes", "30", "--glyph-val-classes", "10",
            "--ways", "8", "--shots", "1",
            "--queries", "3", "--episodes", str(episodes), "--decay-every", "2", "--val-every", "3", "--val-ways", "5",
            "--val-episodes", "20", "--cache-dir", str(cache), "--threads", "1", "--device", "cpu"]
    return parser.parse_args(argv + (["--resume"] if resume else []))


def test_tiny_run_then_resume_matches_an_uninterrupted_run(tmp_path: Path, capsys) -> None:
    straight = tmp_path / "straight.pt"
    assert pretrain.run(_args(straight, tmp_path, 6)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["fingerprint"] == load_encoder(straight).fingerprint
    blob = read_checkpoint(straight)
    assert blob["config"]["dataset"] == "glyphs" and len(blob["extra"]["training"]["history"]) == 2
    assert "val_5way_1shot" in blob["extra"]["training"]["history"][-1]

    resumed = tmp_path / "resumed.pt"
    pretrain.run(_args(resumed, tmp_path, 3))
    assert (tmp_path / "resumed.pt.state.pt").exists()
    pretrain.run(_args(resumed, tmp_path, 6, resume=True))
    assert "resumed from" in capsys.readouterr().out
    a, b = read_checkpoint(straight)["state_dict"], read_checkpoint(resumed)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_encoder(resumed).fingerprint == load_encoder(straight).fingerprint


def test_shipped_glyph_weights_beat_an_untrained_conv4() -> None:
    held_out = make_glyphs(60, 20, seed=987_654)  # classes never seen in training
    trained = evaluate(load_encoder("glyphs", device="cpu"), held_out, 5, 1, 5, 150, seed=1)
    untrained = evaluate(Encoder.random(seed=0, device="cpu"), held_out, 5, 1, 5, 150, seed=1)
    assert trained["accuracy"] > untrained["accuracy"] + 0.1, (trained, untrained)
    assert trained["accuracy"] > 0.8


def test_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    pretrain.register(parser)
    with pytest.raises(SystemExit):
        pretrain.run(parser.parse_args(["--dataset", "omniglot", "--out", str(tmp_path / "x.pt")]))


def test_mini_imagenet_pretrain_smoke(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(3):
            folder = tmp_path / "mini" / split / f"n0{split[0]}{c:07d}"
            folder.mkdir(parents=True)
            base = rng.integers(0, 256, 3)
            for i in range(6):
                img = np.clip(base + rng.normal(0, 40, (40, 50, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.jpg")
    parser = argparse.ArgumentParser()
    pretrain.register(parser)
    out = tmp_path / "mini.pt"
    args = parser.parse_args(["--dataset", "mini-imagenet", "--data-dir", str(tmp_path / "mini"), "--out", str(out),
                              "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "2", "--val-every", "2",
                              "--val-ways", "2", "--val-episodes", "5", "--threads", "1", "--device", "cpu"])
    assert pretrain.run(args) == 0
    enc = load_encoder(out)
    assert enc.dim == 1600 and enc.config["channels"] == 3 and enc.config["image_size"] == 84
