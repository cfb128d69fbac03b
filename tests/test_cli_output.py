"""Help and output: every limit documented with its default, addresses checked at once, text logs and names."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from helpers import FEDRECON


def _help(*command: str) -> str:
    return subprocess.run([*FEDRECON, *command, "--help"], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_server_and_pretrain_help_show_every_default_once() -> None:
    text = " ".join(_help("server").split()).split(" options: ", 1)[1]
    for flag in ("--max-classes-per-push", "--max-message-bytes", "--max-class-id-bytes", "--max-dim",
                 "--max-watch-streams", "--log-format"):
        after = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert "(default:" in after and len(after) > 40, (flag, after)
    assert text.count("127.0.0.1") == 1
    pretrain = " ".join(_help("pretrain").split())
    for fragment in ("(default: 2000)", "(default: 300)", "(default: 1)", "(default: 0.001)"):
        assert fragment in pretrain, fragment


def test_bad_server_addresses_fail_at_once_in_one_line() -> None:
    for address, expected in (("127.0.0.1", "expected HOST:PORT (e.g. 127.0.0.1:50051)"),
                              ("http://127.0.0.1:50051", "without http://"), ("localhost:70000", "1-65535")):
        started = time.monotonic()
        out = subprocess.run([*FEDRECON, "client", "info", "--server", address, "--connect-timeout", "5"],
                             capture_output=True, text=True, timeout=60)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and expected in lines[0], out.stderr
        assert time.monotonic() - started < 4.5  # never waits for the connect timeout


def test_text_logs_name_the_address_and_watch_prints_names_as_they_are(tmp_path: Path) -> None:
    server = subprocess.Popen([*FEDRECON, "server", "--port", "0", "--memory", "--insecure", "--log-format", "text"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = server.stdout.readline().strip()
        np.savez(tmp_path / "d.npz", class_ids=np.array(["café", "日本"]), counts=np.array([1, 2]),
                 means=np.ones((2, 4)))
        push = subprocess.run([*FEDRECON, "client", "push", "--server", address, "--client-id", "zoe", "--space", "s",
                               "--npz", str(tmp_path / "d.npz"), "--state", str(tmp_path / "zoe.db")],
                              capture_output=True, text=True, timeout=60)
        assert push.returncode == 0, push.stderr
        watch = subprocess.run([*FEDRECON, "client", "watch", "--server", address, "--space", "s", "--updates", "1"],
                               capture_output=True, text=True, timeout=60)
        assert watch.returncode == 0 and json.loads(watch.stdout)["class_ids"] == ["café", "日本"], watch.stderr
        assert "café" in watch.stdout and "\\u" not in watch.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=15)
    assert f"address={address}" in err
