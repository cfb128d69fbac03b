"""Crash safety: SIGKILL the server under concurrent pushes, restart on the same database; nothing lost or doubled."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedrecon.benchmarks.crash_safety import SPACE, push_content, verify
from fedrecon.server.store import PrototypeStore


def test_verify_catches_lost_and_doubled_pushes(tmp_path: Path) -> None:
    with PrototypeStore(tmp_path / "crash.db") as store:
        store.push("client0", SPACE, 1, *push_content(0, 1, 40, 8))
        store.push("client0", SPACE, 2, *push_content(0, 1, 40, 8))  # seq 1's deltas counted again
        store.push("client1", SPACE, 1, *push_content(1, 1, 40, 8))
    (tmp_path / "acks0.txt").write_text("1\n2\n")
    (tmp_path / "acks1.txt").write_text("1\n2\n")  # seq 2 acknowledged but not stored
    check = verify(tmp_path / "crash.db", tmp_path, 2, 40, 8, final=False)
    assert check["lost"] == 1 and check["mismatched"] > 0 and check["doubled"] > 0
    for c in range(2):
        (tmp_path / f"acks{c}.txt").write_text("1\n")
    with PrototypeStore(tmp_path / "ok.db") as store:
        for c in range(2):
            store.push(f"client{c}", SPACE, 1, *push_content(c, 1, 40, 8))
    clean = verify(tmp_path / "ok.db", tmp_path, 2, 40, 8, final=True)
    assert clean["lost"] == clean["doubled"] == clean["mismatched"] == 0
    assert clean["acked"] == clean["stored"] == 2


@pytest.mark.slow
def test_kills_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "fedrecon.benchmarks.crash_safety", "--kills", "3", "--clients", "4",
                          "--checkpoint-every", "1", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=240)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (result, out.stderr[-2000:])
    assert result["acked"] > 0 and result["checks"] == 4
    assert result["lost"] == result["doubled"] == result["mismatched"] == 0
    assert result["client_exit_codes"] == [0, 0, 0, 0]
