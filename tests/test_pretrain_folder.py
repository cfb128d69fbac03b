"""`fedrecon pretrain --dataset folder` on a folder of photos works first time, or fails before training."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from helpers import FEDRECON
from photos import write_photos


def _pretrain(photos: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDRECON, "pretrain", "--dataset", "folder", "--data-dir", str(photos), "--out",
                           str(out), "--threads", "1", *extra], capture_output=True, text=True, timeout=300)


def test_defaults_are_sized_to_the_folder_and_the_mode_detected(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", 7, seed=3)  # 6 classes x 7: 5 train, 1 validation class
    write_photos(tmp_path / "photos", 7, seed=4, special=False,
                 classes={"sea": ((20, 90, 160), "rectangle"), "rose": ((200, 30, 90), "ellipse")})
    out = _pretrain(tmp_path / "photos", tmp_path / "mine.pt", "--episodes", "2", "--val-every", "2",
                    "--val-episodes", "3", "--image-size", "32")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["steps"] == 2
    info = json.loads(subprocess.run([*FEDRECON, "encoder", "info", str(tmp_path / "mine.pt")], capture_output=True,
                                     text=True, timeout=120, check=True).stdout)
    assert info["preprocessing"]["mode"] == "RGB" and info["domain"] == "natural"
    recipe = info["training"]
    assert recipe["step"] == 2


def test_a_recipe_the_folder_cannot_feed_is_refused_before_training(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", 7, seed=5)
    for flags, named in ((["--ways", "10"], "--ways 10"), (["--queries", "9"], "--queries 9"),
                         (["--val-ways", "5"], "--val-ways 5")):
        started = time.monotonic()
        out = _pretrain(tmp_path / "photos", tmp_path / "never.pt", "--episodes", "50", *flags)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and named in lines[0], out.stderr
        assert "pretrain" not in out.stdout and time.monotonic() - started < 60
        assert not (tmp_path / "never.pt").exists()
    out = _pretrain(tmp_path / "photos", tmp_path / "small.pt", "--episodes", "1", "--image-size", "32")
    assert out.returncode == 0, out.stderr  # 6 classes: one held out cannot fill an episode, so validation is off
    assert "validation: none: 1 held-out class(es)" in out.stdout


def test_gray_photos_train_and_validate_without_the_ink_check(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", 7, seed=6)
    out = _pretrain(tmp_path / "photos", tmp_path / "gray.pt", "--mode", "L", "--val-fraction", "0.4",
                    "--episodes", "1", "--val-every", "1", "--val-episodes", "2", "--image-size", "28")
    assert out.returncode == 0, out.stderr  # not inverted: a natural-image encoder, never the handwriting check
    assert "val_2way_1shot" in out.stdout


def test_folder_experiments_name_the_folder_and_plot_no_omniglot_references(tmp_path: Path) -> None:
    from fedrecon.client.encoder import Encoder

    write_photos(tmp_path / "photos", 6, seed=7)
    encoder = Encoder.random("mini-imagenet", 28, 3, seed=2, device="cpu").save(tmp_path / "rgb.pt")
    out = subprocess.run([*FEDRECON, "experiment", "omniglot-cil", "--dataset", "folder", "--data-dir",
                          str(tmp_path / "photos"), "--encoder", str(encoder), "--methods", "fedrecon", "--runs", "1",
                          "--set", "protocol.classes=6", "--set", "protocol.train_shots=4", "--set",
                          "protocol.test_shots=2", "--set", "protocol.checkpoints=[3,6]", "--quiet", "--out",
                          str(tmp_path / "exp")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert results["title"] == "class-incremental protocol: folder:photos" and results["anchors"] == {}
    summary = (tmp_path / "exp" / "summary.md").read_text()
    assert "folder:photos" in summary and "omniglot" not in summary.lower() and "reference" not in summary


def test_a_failed_validation_keeps_the_trained_weights(tmp_path: Path) -> None:
    import argparse

    import numpy as np
    import pytest

    from fedrecon.client.data.images import ImageSet
    from fedrecon.client.encoder import build_model, default_config, load_encoder
    from fedrecon.experiments.pretrain import validate_or_keep

    config = default_config("glyphs", 28, 1)
    model = build_model(config)
    val = ImageSet(["a", "b"], np.zeros((4, 1, 28, 28), np.uint8), np.array([0, 0, 1, 1]))  # too small for 5 ways
    args = argparse.Namespace(val_ways=5, val_episodes=3, command_line="fedrecon pretrain ...")
    with pytest.raises(ValueError, match="validation at step 7 failed") as error:
        validate_or_keep(model, config, val, args, "cpu", tmp_path / "mine.pt", 7)
    kept = tmp_path / "mine.failed.pt"
    assert str(kept) in str(error.value) and load_encoder(kept).dim == 64
