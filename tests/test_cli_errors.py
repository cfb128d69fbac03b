"""Ordinary mistakes end as one line on stderr and exit code 2 (a traceback only with --debug)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FEDRECON

from fedrecon.client.encoder import Encoder, resolve_weights


def _fails_in_one_line(*args: str, cwd: Path | None = None, lines: int = 1) -> str:
    out = subprocess.run([*FEDRECON, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("fedrecon ")]
    assert len(errors) == 1, out.stderr
    if lines:
        assert len(out.stderr.strip().splitlines()) == lines, out.stderr
    return errors[0]


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nan.npz", class_ids=np.array(["a"]), counts=np.array([1]), means=np.array([[np.nan, 1.0]]))
    closed = "127.0.0.1:9"
    assert "NaN" in _fails_in_one_line("client", "push", "--server", closed, "--client-id", "a", "--space", "s",
                                       "--npz", str(tmp_path / "nan.npz"), "--state", str(tmp_path / "a.db"))
    (tmp_path / "bad.db").write_text("garbage")
    assert "not a fedrecon client state" in _fails_in_one_line(
        "client", "sync", "--server", closed, "--client-id", "bad", "--encoder", "glyphs", "--state-dir",
        str(tmp_path))
    (tmp_path / "tokens.json").write_text("{bad")
    assert "token file" in _fails_in_one_line("server", "--port", "0", "--memory", "--tokens",
                                              str(tmp_path / "tokens.json"), lines=0)
    if not torch.cuda.is_available():
        assert "cuda" in _fails_in_one_line("client", "learn", "--server", closed, "--client-id", "c", "--encoder",
                                            "glyphs", "--device", "cuda", "--state-dir", str(tmp_path), str(tmp_path))
    assert "no such checkpoint" in _fails_in_one_line("encoder", "info", str(tmp_path / "missing.pt"))
    out = subprocess.run([*FEDRECON, "--debug", "encoder", "info", str(tmp_path / "missing.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _fails_in_one_line("server", "--port", str(port), "--memory", "--insecure", lines=0)
    assert str(port) in line


def test_an_existing_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = Encoder.random(seed=3, device="cpu").save(tmp_path / "omniglot.pt")
    assert resolve_weights("omniglot") == Path("omniglot.pt")
    assert resolve_weights("omniglot.pt") == Path("omniglot.pt")
    assert resolve_weights("glyphs").parent.name == "weights"
    out = subprocess.run([*FEDRECON, "encoder", "info", "omniglot"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ})
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["path"] == "omniglot.pt" and info["fingerprint"] == Encoder.random(seed=3, device="cpu").fingerprint
    assert mine.exists()


def test_errors_carry_their_command_prefix_once(tmp_path) -> None:
    """Messages that carried a prefix got it twice ("fedrecon server: error: fedrecon server: ...")."""
    import subprocess

    from helpers import FEDRECON

    cert = tmp_path / "c.pem"
    cert.write_text("x")
    runs = {
        "server": [*FEDRECON, "server", "--tls-cert", str(cert), "--insecure", "--port", "0"],
        "admin": [*FEDRECON, "admin", "stats", "--server", "127.0.0.1:1", "--token", "t", "--timeout", "0.5"],
        "experiment": [*FEDRECON, "experiment"],
        "demo": [*FEDRECON, "demo", "--dataset", "omniglot", "--out", str(tmp_path / "demo")],
        "bench": [*FEDRECON, "bench", "--only", "bogus", "--out", str(tmp_path / "bench")],
        "fewshot": [*FEDRECON, "fewshot", "--dataset", "omniglot"],
        "pretrain": [*FEDRECON, "pretrain", "--dataset", "omniglot", "--out", str(tmp_path / "pretrain")],
    }
    for command, argv in runs.items():
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (command, out.stderr)
        assert lines[0].startswith(f"fedrecon {command}: error: ") and lines[0].count(f"fedrecon {command}") == 1, \
            lines[0]
        assert not lines[0].removeprefix(f"fedrecon {command}: error: ").startswith(f"{command}: "), lines[0]
