"""Pretraining: a tiny glyph run writes a loadable checkpoint, resuming reproduces an uninterrupted run
(step decay, and cosine with augmentation), every phase is recorded, `--keep best` keeps the best validated
step, a changed recipe cannot be resumed, and the shipped glyph weights clearly beat an untrained Conv4."""

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


def _args(out: Path, cache: Path, episodes: int, resume: bool = False, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pretrain.register(parser)
    argv = ["--dataset", "glyphs", "--out", str(out), "--glyph-classes", "30", "--glyph-val-classes", "10",
            "--image-size", "28", "--ways", "8", "--shots", "1",
            "--queries", "3", "--episodes", str(episodes), "--decay-every", "2", "--val-every", "3", "--val-ways", "5",
            "--val-episodes", "20", "--cache-dir", str(cache), "--threads", "1", "--device", "cpu"]
    args = parser.parse_args(argv + (["--resume"] if resume else []) + list(extra))
    args.command_line = "fedrecon pretrain " + " ".join(argv + (["--resume"] if resume else []) + list(extra))
    return args


def _weights_equal(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


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


def test_cosine_schedule_with_augmentation_resumes_exactly(tmp_path: Path) -> None:
    cosine = ("--decay-every", "0", "--augment")
    straight, resumed = tmp_path / "straight.pt", tmp_path / "resumed.pt"
    pretrain.train(_args(straight, tmp_path, 6, False, *cosine))
    pretrain.train(_args(resumed, tmp_path, 6, False, *cosine, "--stop-after", "3"))
    assert read_checkpoint(resumed)["extra"]["training"]["step"] == 3
    assert not _weights_equal(straight, resumed)
    pretrain.train(_args(resumed, tmp_path, 6, True, *cosine))
    assert _weights_equal(straight, resumed)
    plain = tmp_path / "plain.pt"  # augmentation changes what is learned
    pretrain.train(_args(plain, tmp_path, 6, False, "--decay-every", "0"))
    assert not _weights_equal(straight, plain)


def test_every_phase_is_recorded_across_a_resume(tmp_path: Path) -> None:
    out = tmp_path / "phased.pt"
    pretrain.train(_args(out, tmp_path, 3))
    summary = pretrain.train(_args(out, tmp_path, 5, True, "--save-every", "1"))
    phases = read_checkpoint(out)["extra"]["training"]["phases"]
    assert [(p["start_step"], p["end_step"]) for p in phases] == [(0, 3), (3, 5)]
    assert "--episodes 3 " in phases[0]["command"] and "--resume" not in phases[0]["command"]
    assert "--episodes 5 " in phases[1]["command"] and phases[1]["command"].endswith("--resume --save-every 1")
    assert all(p["seed"] == 0 and p["device"].startswith("cpu") and p["cpu_s"] > 0 and p["wall_s"] > 0 for p in phases)
    state = torch.load(tmp_path / "phased.pt.state.pt", weights_only=False)
    assert state["phases"] == phases and summary["cpu_s"] >= phases[0]["cpu_s"] + phases[1]["cpu_s"] - 0.2
    assert all("eta_s" in entry for entry in state["history"]) and state["history"][-1]["eta_s"] == 0


def test_keep_best_ships_the_best_validated_step(tmp_path: Path) -> None:
    out = tmp_path / "best.pt"
    summary = pretrain.train(_args(out, tmp_path, 5, False, "--val-every", "1", "--keep", "best"))
    training = read_checkpoint(out)["extra"]["training"]
    scores = [entry["val_5way_1shot"] for entry in training["history"]]
    best_step = training["history"][int(np.argmax(scores))]["step"]
    assert training["kept"] == {"rule": "best by validation", "step": best_step, "val": max(scores)}
    assert summary["kept"] == training["kept"]
    assert read_checkpoint(tmp_path / "best.last.pt")["extra"]["training"]["kept"] == {"rule": "last", "step": 5}
    again = tmp_path / "again.pt"  # the same recipe stopped at the best step gives the kept weights
    pretrain.train(_args(again, tmp_path, 5, False, "--val-every", "1", "--stop-after", str(best_step)))
    assert _weights_equal(out, again)


def test_keep_best_without_a_held_out_split_is_refused(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    pretrain.register(parser)
    args = parser.parse_args(["--dataset", "omniglot", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x.pt"),
                              "--monitor-evaluation", "--keep", "best", "--device", "cpu"])
    with pytest.raises(ValueError, match="--keep best needs a validation set"):
        pretrain.train(args)


@pytest.mark.parametrize(("change", "field"), [(("--ways", "6"), "--ways"), (("--augment",), "--augment"),
                                              (("--lr", "0.002"), "--lr"), (("--seed", "1"), "--seed"),
                                              (("--decay-every", "0"), "--decay-every")])
def test_resuming_with_another_recipe_is_refused(tmp_path: Path, change: tuple[str, ...], field: str) -> None:
    out = tmp_path / "recipe.pt"
    pretrain.train(_args(out, tmp_path, 2))
    with pytest.raises(ValueError, match=f"trained with {field} "):
        pretrain.train(_args(out, tmp_path, 4, True, *change))


def test_a_cosine_schedule_cannot_be_stretched_but_step_decay_can(tmp_path: Path) -> None:
    out = tmp_path / "cosine.pt"
    pretrain.train(_args(out, tmp_path, 4, False, "--decay-every", "0", "--stop-after", "2"))
    with pytest.raises(ValueError, match="trained with --episodes 4, not 6"):
        pretrain.train(_args(out, tmp_path, 6, True, "--decay-every", "0"))
    step = tmp_path / "step.pt"
    pretrain.train(_args(step, tmp_path, 2))
    assert pretrain.train(_args(step, tmp_path, 4, True))["steps"] == 4


def test_init_from_a_proxy_run_carries_its_phases(tmp_path: Path) -> None:
    proxy, tuned = tmp_path / "proxy.pt", tmp_path / "tuned.pt"
    pretrain.train(_args(proxy, tmp_path, 2, False, "--method", "proxy", "--batch-size", "64"))
    pretrain.train(_args(tuned, tmp_path, 2, False, "--init", str(proxy)))
    phases = read_checkpoint(tuned)["extra"]["training"]["phases"]
    assert len(phases) == 2 and "--method proxy" in phases[0]["command"] and phases[0]["stage"].startswith("init ")
    assert not _weights_equal(tuned, tmp_path / "proxy.pt")
    with pytest.raises(ValueError, match="--init"):
        pretrain.train(_args(tmp_path / "x.pt", tmp_path, 2, False, "--init", str(proxy), "--arch", "conv4-nopool"))


def test_nopool_arch_round_trips_with_its_width(tmp_path: Path) -> None:
    out = tmp_path / "wide.pt"
    summary = pretrain.train(_args(out, tmp_path, 2, False, "--arch", "conv4-nopool"))
    enc = load_encoder(out, device="cpu")
    assert enc.dim == 576 and enc.config["arch"] == "conv4-nopool" and enc.fingerprint == summary["fingerprint"]
    assert enc.fingerprint.startswith("conv4-nopool-") and enc.describe()["bytes_per_class_float32"] == 2304
    assert summary["bytes_per_class"] == 2304 and enc.embed(np.zeros((3, 1, 28, 28), np.uint8)).shape == (3, 576)
    assert load_encoder("glyphs", device="cpu").describe()["bytes_per_class_float32"] == 256


def test_a_wider_conv4_round_trips_and_its_width_is_part_of_the_recipe(tmp_path: Path) -> None:
    """`--hidden` widens every block: the checkpoint rebuilds the wider net (96 floats per class at 28px); a state
    cannot be resumed at another width; a state saved before the flag existed resumes as the 64 it was."""
    out = tmp_path / "wide.pt"
    summary = pretrain.train(_args(out, tmp_path, 2, False, "--hidden", "96"))
    enc = load_encoder(out, device="cpu")
    assert enc.dim == 96 and enc.config["hidden"] == 96 and summary["bytes_per_class"] == 384
    assert enc.embed(np.zeros((2, 1, 28, 28), np.uint8)).shape == (2, 96)
    with pytest.raises(ValueError, match="--hidden 96, not 64"):
        pretrain.train(_args(out, tmp_path, 3, True))
    with pytest.raises(ValueError, match="at least 1 channel"):
        pretrain.train(_args(tmp_path / "none.pt", tmp_path, 2, False, "--hidden", "0"))
    old = tmp_path / "old.pt"
    pretrain.train(_args(old, tmp_path, 2))
    state = torch.load(f"{old}.state.pt", weights_only=False)
    del state["recipe"]["hidden"]  # as written before --hidden existed
    torch.save(state, f"{old}.state.pt")
    assert pretrain.train(_args(old, tmp_path, 3, True))["steps"] == 3


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


def _make_dry_run(target: str) -> list[str]:
    """The fedrecon command lines `make -n TARGET` would run (the venv's path dropped)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", target, "DATA_DIR=/data"], cwd=root, capture_output=True, text=True,
                         check=True).stdout.replace("\\\n", " ")
    return [line.split("/fedrecon ", 1)[1] for line in dry.splitlines() if "/fedrecon " in line and "pip" not in line]


def test_make_encoder_repeats_the_recipe_recorded_in_the_shipped_weights() -> None:
    """`make encoder` (the documented reproduction) runs the phases each member of client/weights/omniglot.pt
    records, then combines them in the recorded order."""
    import shlex

    parser = argparse.ArgumentParser()
    pretrain.register(parser)
    lines = _make_dry_run("encoder")
    runs = [parser.parse_args(shlex.split(line)[1:]) for line in lines if line.startswith("pretrain ")]
    long, anneal, proxy, episodic, third = runs
    anneal.image_size = episodic.image_size = third.image_size = 28  # train() picks it; records have it filled in
    combined = read_checkpoint(Path(__file__).resolve().parents[1] / "client" / "weights" / "omniglot.pt")
    v2, second, last = (m["training"] for m in combined["extra"]["training"]["members"])
    first, *_, last_init, final = v2["phases"]
    assert pretrain.recipe(long) == pretrain.recipe(parser.parse_args(shlex.split(first["command"])[2:]))
    assert long.stop_after == last_init["end_step"] and anneal.init == str(Path(long.out).with_suffix("")) + ".last.pt"
    assert pretrain.recipe(anneal) == pretrain.saved_recipe(v2["recipe"]) and final["end_step"] == anneal.episodes
    assert pretrain.recipe(episodic) == pretrain.saved_recipe(second["recipe"])
    assert episodic.init == str(Path(proxy.out).with_suffix("")) + ".last.pt"
    proxy_phase = second["phases"][0]
    assert pretrain.recipe(proxy) == pretrain.recipe(parser.parse_args(shlex.split(proxy_phase["command"])[2:]))
    assert pretrain.recipe(third) == pretrain.saved_recipe(last["recipe"]) and third.init is None
    assert lines[-1].split()[:2] == ["encoder", "combine"]
    assert lines[-1].split()[2:5] == [anneal.out, episodic.out, third.out]
