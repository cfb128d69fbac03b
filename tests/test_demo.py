"""`fedrecon demo`: a real server process and client processes over gRPC; table, results.json and plot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import FEDRECON

from fedrecon.client.encoder import Encoder


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory) -> Path:
    """A seeded untrained glyph encoder saved as a checkpoint (the demo must not depend on shipped weights)."""
    return Encoder.random("glyphs", 28, 1, seed=0, device="cpu").save(tmp_path_factory.mktemp("enc") / "glyphs.pt")


def _run_demo(out: Path, *extra: str) -> dict:
    done = subprocess.run([*FEDRECON, "demo", "--out", str(out), *extra], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "c0 before" in done.stdout and "bytes up" in done.stdout  # the per-merge table
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.mark.slow
def test_demo_on_glyphs_with_client_processes(tmp_path: Path, encoder_path: Path) -> None:
    summary = _run_demo(tmp_path, "--encoder", str(encoder_path), "--missions", "2", "--classes-per-mission", "3",
                        "--train-shots", "6", "--test-shots", "3")
    result = json.loads((tmp_path / "results.json").read_text())
    assert summary["clients"] == 3 and len(result["rounds"]) == 2
    assert [r["classes_seen"] for r in result["rounds"]] == [9, 18]
    last = result["rounds"][-1]
    # after merging every client knows every class, so it beats what it knew alone
    assert min(last["after"]) > max(last["before"])
    assert len(set(last["after"])) == 1  # identical merged tables on every client
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in result["rounds"])
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    for i in range(3):
        assert (tmp_path / f"client-{i}.log").exists()


def test_demo_rejects_omniglot_without_data_dir(tmp_path: Path) -> None:
    done = subprocess.run([*FEDRECON, "demo", "--dataset", "omniglot", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "--data-dir" in done.stderr
