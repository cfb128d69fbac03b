"""`fedrecon encoder combine`: trained Conv4 side by side embed as their members do, concatenated, in a new space;
mismatched, repeated or already-combined members are refused in one line; the result exports to ONNX and
cannot seed a training run."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FEDRECON

from fedrecon.client.combine import combine
from fedrecon.client.encoder import Conv4, Encoder, default_config, load_encoder
from fedrecon.client.export import export_onnx
from fedrecon.experiments import pretrain


def _member(tmp_path: Path, seed: int, hidden: int = 64) -> Path:
    """A saved Conv4 with seeded weights and non-trivial BatchNorm statistics (so folding is exercised)."""
    torch.manual_seed(seed)
    model = Conv4(1, hidden)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    encoder = Encoder(model, default_config("omniglot", 28, 1, hidden=hidden), "cpu")
    return encoder.save(tmp_path / f"m{seed}-{hidden}.pt")


def test_a_combined_encoder_embeds_as_its_members_side_by_side(tmp_path: Path) -> None:
    a, b = _member(tmp_path, 1), _member(tmp_path, 2)
    summary = combine([str(a), str(b)], tmp_path / "ab.pt", "test")
    ea, eb, ab = (load_encoder(p, device="cpu") for p in (a, b, tmp_path / "ab.pt"))
    assert summary["fingerprint"] == ab.fingerprint and ab.fingerprint.startswith("conv4x2-")
    assert ab.fingerprint not in (ea.fingerprint, eb.fingerprint) and ab.dim == 128 == summary["bytes_per_class"] // 4
    x = np.random.default_rng(0).integers(0, 256, (11, 1, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(ab.embed(x), np.hstack([ea.embed(x), eb.embed(x)]), atol=1e-6)
    swapped = combine([str(b), str(a)], tmp_path / "ba.pt", "test")  # member order is part of the space
    assert swapped["fingerprint"] != ab.fingerprint
    assert load_encoder(tmp_path / "ab.pt", device="cpu").fingerprint == ab.fingerprint  # stable on reload


def test_members_that_cannot_share_one_input_are_refused_in_one_line(tmp_path: Path) -> None:
    a, b, narrow = _member(tmp_path, 1), _member(tmp_path, 2), _member(tmp_path, 3, hidden=32)
    with pytest.raises(ValueError, match="at least two"):
        combine([str(a)], tmp_path / "x.pt", "test")
    with pytest.raises(ValueError, match="named twice"):
        combine([str(a), str(a)], tmp_path / "x.pt", "test")
    with pytest.raises(ValueError, match="differs from .* in hidden"):
        combine([str(a), str(narrow)], tmp_path / "x.pt", "test")
    combine([str(a), str(b)], tmp_path / "ab.pt", "test")
    with pytest.raises(ValueError, match="already a combined encoder"):
        combine([str(tmp_path / "ab.pt"), str(a)], tmp_path / "x.pt", "test")
    assert not (tmp_path / "x.pt").exists()
    blob = torch.load(tmp_path / "ab.pt", weights_only=True)
    for bad in (0, -1, 1.5, True):
        torch.save({**blob, "config": {**blob["config"], "members": bad}}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="members must be a whole number"):
            load_encoder(tmp_path / "bad.pt")
    out = subprocess.run([*FEDRECON, "encoder", "combine", str(a), str(narrow), "--out", str(tmp_path / "y.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and "hidden" in out.stderr
    assert not (tmp_path / "y.pt").exists()


def test_the_command_records_each_members_training_and_info_shows_it(tmp_path: Path) -> None:
    a, b = _member(tmp_path, 1), _member(tmp_path, 2)
    out = subprocess.run([*FEDRECON, "encoder", "combine", str(a), str(b), "--out", str(tmp_path / "ab.pt")],
                         capture_output=True, text=True, timeout=120, check=True)
    made = json.loads(out.stdout)
    info = json.loads(subprocess.run([*FEDRECON, "encoder", "info", str(tmp_path / "ab.pt")], capture_output=True,
                                     text=True, timeout=120, check=True).stdout)
    assert info["fingerprint"] == made["fingerprint"] and info["dim"] == 128 and info["members"] == 2
    assert [line.split(":")[0] for line in info["training"]["members"]] == made["members"]  # one line per member
    assert made["members"] == [load_encoder(p).fingerprint for p in (a, b)]
    full = json.loads(subprocess.run([*FEDRECON, "encoder", "info", "--full", str(tmp_path / "ab.pt")],
                                     capture_output=True, text=True, timeout=120, check=True).stdout)
    assert [m["fingerprint"] for m in full["training"]["members"]] == made["members"]


def test_a_combined_encoder_exports_to_onnx_in_the_same_space(tmp_path: Path) -> None:
    combine([str(_member(tmp_path, 1)), str(_member(tmp_path, 2))], tmp_path / "ab.pt", "test")
    summary = export_onnx(load_encoder(tmp_path / "ab.pt", device="cpu"), tmp_path / "ab.onnx")
    assert summary["fingerprint"] == load_encoder(tmp_path / "ab.pt").fingerprint and summary["dim"] == 128
    assert summary["max_abs_difference"] <= 1e-4


def test_a_combined_encoder_cannot_seed_a_training_run(tmp_path: Path) -> None:
    combine([str(_member(tmp_path, 1)), str(_member(tmp_path, 2))], tmp_path / "ab.pt", "test")
    parser = argparse.ArgumentParser()
    pretrain.register(parser)
    args = parser.parse_args(["--dataset", "glyphs", "--out", str(tmp_path / "t.pt"), "--glyph-classes", "30",
                              "--glyph-val-classes", "10", "--image-size", "28", "--episodes", "2", "--threads", "1",
                              "--device", "cpu", "--init", str(tmp_path / "ab.pt")])
    args.command_line = "fedrecon pretrain (test)"
    with pytest.raises(ValueError, match="combined encoder .* train from one of its members"):
        pretrain.train(args)
    assert not (tmp_path / "t.pt").exists()
