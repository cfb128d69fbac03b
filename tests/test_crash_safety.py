"""Crash safety: SIGKILL the server under concurrent pushes, restart on the same database; nothing lost or doubled."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedrecon.benchmarks.crash_safety import SPACE, Pressure, expected_tables, push_content, verify
from fedrecon.proto.payloads import Deltas
from fedrecon.server.store import PrototypeStore


def test_verify_catches_lost_and_doubled_pushes(tmp_path: Path) -> None:
    with PrototypeStore(tmp_path / "crash.db") as store:
        store.push("client0", 1, SPACE, Deltas(*push_content(0, 1, 40, 8)))
        store.push("client0", 2, SPACE, Deltas(*push_content(0, 1, 40, 8)))  # seq 1's deltas counted again
        store.push("client1", 1, SPACE, Deltas(*push_content(1, 1, 40, 8)))
    (tmp_path / "acks0.txt").write_text("1\n2\n")
    (tmp_path / "acks1.txt").write_text("1\n2\n")  # seq 2 acknowledged but not stored
    check = verify(tmp_path / "crash.db", tmp_path, 2, 40, 8, final=False)
    assert check["lost"] == 1 and check["mismatched"] > 0 and check["doubled"] > 0
    for c in range(2):
        (tmp_path / f"acks{c}.txt").write_text("1\n")
    with PrototypeStore(tmp_path / "ok.db") as store:
        for c in range(2):
            store.push(f"client{c}", 1, SPACE, Deltas(*push_content(c, 1, 40, 8)))
    clean = verify(tmp_path / "ok.db", tmp_path, 2, 40, 8, final=True)
    assert clean["lost"] == clean["doubled"] == clean["mismatched"] == 0
    assert clean["acked"] == clean["stored"] == 2


def test_pager_check_catches_an_inconsistent_paged_pull(tmp_path: Path) -> None:
    (tmp_path / "acks0.txt").write_text("1 1\n2 3\n")
    (tmp_path / "acks1.txt").write_text("1 2\n")
    pressure = Pressure("127.0.0.1:1", tmp_path / "x.db", 2, 40, 8, seed=0)
    for version, last in ((2, {0: 1, 1: 1}), (3, {0: 2, 1: 1})):
        _, merged = expected_tables(last, 40, 8)
        pressure.pulls.append((version, {cid: (count, total) for cid, (count, total) in merged.items()}))
    assert pressure.mismatched_pulls(tmp_path) == 0
    _, stale = expected_tables({0: 1, 1: 1}, 40, 8)  # claims version 3 but holds the state of version 2
    pressure.pulls.append((3, dict(stale)))
    assert pressure.mismatched_pulls(tmp_path) == 1


@pytest.mark.slow
@pytest.mark.parametrize("stream", [1, 4], ids=["unary", "push-stream"])
def test_kills_lose_nothing_and_double_nothing(tmp_path: Path, stream: int) -> None:
    out = subprocess.run([sys.executable, "-m", "fedrecon.benchmarks.crash_safety", "--kills", "3", "--clients", "4",
                          "--checkpoint-every", "1", "--workdir", str(tmp_path), "--stream", str(stream)],
                         capture_output=True, text=True, timeout=240)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (result, out.stderr[-2000:])
    assert result["acked"] > 0 and result["checks"] == 4 and result["stream"] == stream
    assert result["lost"] == result["doubled"] == result["mismatched"] == 0
    assert result["client_exit_codes"] == [0, 0, 0, 0]
    assert result["reuse_silently_dropped"] == result["reuse_accepted"] == result["paged_mismatched"] == 0
    assert result["second_servers_refused"] == 3 and result["second_servers_started"] == 0
    assert result["reused_refused"] > 0 and result["paged_pulls"] > 0


CHILD = r'''
import os, sys
import numpy as np
from fedrecon.server import durable
from fedrecon.proto.payloads import Deltas
from fedrecon.server.store import PrototypeStore
from fedrecon.benchmarks.crash_safety import SPACE, push_content

db, where, pushes = sys.argv[1], sys.argv[2], int(sys.argv[3])
if where == "checkpoint":  # die inside the checkpoint transaction: rows written, log deleted, not committed
    original = durable.SqliteLog.set_meta
    def dying(self, key, value):
        original(self, key, value)
        if key == "checkpoint_version" and os.environ.get("ARMED"):
            os._exit(137)
    durable.SqliteLog.set_meta = dying
elif where == "append":  # die right after a push is committed, before it is applied or acknowledged
    original_append = durable.SqliteLog.append
    def dying_append(self, *args, **kwargs):
        original_append(self, *args, **kwargs)
        if os.environ.get("ARMED"):
            os._exit(137)
    durable.SqliteLog.append = dying_append
store = PrototypeStore(db, checkpoint_every=10**9, checkpoint_seconds=10**9)
for seq in range(1, pushes + 1):
    if seq == pushes:
        os.environ["ARMED"] = "1"
    store.push("client0", seq, SPACE, Deltas(*push_content(0, seq, 40, 8)))
    print(seq, flush=True)
store._checkpoint()
print("survived", flush=True)
'''


@pytest.mark.parametrize("where", ["checkpoint", "append"])
def test_kill_inside_a_checkpoint_or_log_write(tmp_path: Path, where: str) -> None:
    db = tmp_path / "crash.db"
    out = subprocess.run([sys.executable, "-c", CHILD, str(db), where, "6"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 137, out.stderr[-2000:]  # the process really died at that point
    acked = [int(x) for x in out.stdout.split() if x.isdigit()]
    (tmp_path / "acks0.txt").write_text("".join(f"{s}\n" for s in acked))
    check = verify(db, tmp_path, 1, 40, 8, final=False)
    assert check["lost"] == check["doubled"] == check["mismatched"] == 0
    assert check["stored"] == 6  # every push was committed, including the one never acknowledged
    with PrototypeStore(db) as store:  # the retry of the unacknowledged push is answered, not applied again
        again = store.push("client0", 6, SPACE, Deltas(*push_content(0, 6, 40, 8)))
        assert again.duplicate and store.version == 6
