"""End to end with real processes on loopback: a `fedrecon server` and client processes, SIGKILL, restart."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import FEDRECON, start_server

DIM = 16

# Client "b" runs as its own Python process: pushes, then re-sends its last push with the same seq.
CLIENT_B = f"""
import json, sys
import grpc
import numpy as np
from fedrecon.client.recon_client import ReconClient
from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb
address, state, data = sys.argv[1:4]
acks = []
with ReconClient(address, "b", state_path=state, dtype="float64") as client:
    with np.load(data) as d:
        for k in range(int(d["n"])):
            ids = [str(c) for c in d[f"ids{{k}}"]]
            acks.append(client.push("space-1", ids, d[f"counts{{k}}"], d[f"means{{k}}"]).to_dict())
        last = acks[-1]  # the same seq with other content is refused; with the same content, answered again
        other = pb.PushRequest(client_id="b", space="space-1", seq=last["seq"],
                               deltas=codec.encode_deltas(Deltas(["x"], [1], np.zeros((1, {DIM}))), "float64"))
        try:
            client.merger.stub.Push(other, timeout=10)
            raise SystemExit("a reused seq with other content was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
        retry = pb.PushRequest(client_id="b", space="space-1", seq=last["seq"], deltas=codec.encode_deltas(
            Deltas(ids, d[f"counts{{k}}"], d[f"means{{k}}"]), "float64"))
    reply = client.merger.stub.Push(retry, timeout=10)
    acks.append({{"seq": reply.seq, "version": reply.version, "duplicate": reply.duplicate}})
print(json.dumps(acks))
"""


def _batches(rng: np.random.Generator, classes: list[str], n: int, central: dict) -> list[tuple]:
    """n pushes over overlapping classes (revisits included); records every example in `central`."""
    out = []
    for _ in range(n):
        ids = list(rng.choice(classes, size=3, replace=False))
        counts, means = [], []
        for cls in ids:
            x = rng.normal(loc=hash(cls) % 7, size=(int(rng.integers(1, 6)), DIM))
            central.setdefault(cls, []).append(x)
            counts.append(len(x))
            means.append(x.mean(0))
        out.append((ids, np.array(counts), np.array(means)))
    return out


def _pull(address: str, out: Path) -> dict:
    subprocess.run([*FEDRECON, "client", "pull", "--server", address, "--space", "space-1", "--dtype", "float64",
                    "--out", str(out)], check=True, capture_output=True, text=True)
    with np.load(out) as d:
        return {"version": int(d["version"]), "class_ids": d["class_ids"].tolist(), "counts": d["counts"].copy(),
                "means": d["means"].copy()}


def test_real_processes_merge_exactly_and_survive_sigkill(tmp_path: Path, db_target) -> None:
    """`fedrecon server --db FILE` and `--db postgresql://...` alike (with a checkpoint in between)."""
    rng = np.random.default_rng(7)
    central: dict[str, list[np.ndarray]] = {}
    classes = [f"class-{i}" for i in range(6)]
    db = db_target
    server, address = start_server(db, "--checkpoint-every", "5")
    try:
        # client "a": one CLI process per push, sequence kept in its state file
        for k, (ids, counts, means) in enumerate(_batches(rng, classes, 4, central), start=1):
            npz = tmp_path / f"a{k}.npz"
            np.savez(npz, class_ids=np.array(ids), counts=counts, means=means)
            out = subprocess.run([*FEDRECON, "client", "push", "--server", address, "--client-id", "a", "--space",
                                  "space-1", "--npz", str(npz), "--dtype", "float64", "--state",
                                  str(tmp_path / "a.json")], check=True, capture_output=True, text=True)
            assert json.loads(out.stdout)["seq"] == k
        # client "b": a separate Python process, with a duplicated retry at the end
        batches = _batches(rng, classes, 5, central)
        data = {"n": len(batches)}
        for k, (ids, counts, means) in enumerate(batches):
            data.update({f"ids{k}": np.array(ids), f"counts{k}": counts, f"means{k}": means})
        np.savez(tmp_path / "b.npz", **data)
        out = subprocess.run([sys.executable, "-c", CLIENT_B, address, str(tmp_path / "b.json"),
                              str(tmp_path / "b.npz")], check=True, capture_output=True, text=True)
        acks = json.loads(out.stdout)
        assert [a["seq"] for a in acks] == [1, 2, 3, 4, 5, 5]
        assert acks[-1]["duplicate"] and acks[-1]["version"] == acks[-2]["version"]

        before = _pull(address, tmp_path / "before.npz")
        assert before["version"] == 9  # 4 + 5 applied pushes; the retry changed nothing
        assert sorted(before["class_ids"]) == sorted(central)
        for cls, count, mean in zip(before["class_ids"], before["counts"], before["means"], strict=True):
            everything = np.concatenate(central[cls])
            assert count == len(everything)
            np.testing.assert_allclose(mean, everything.mean(0), rtol=0, atol=1e-9)

        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server, address = start_server(db)
        after = _pull(address, tmp_path / "after.npz")
        assert after["version"] == before["version"]
        assert after["class_ids"] == before["class_ids"]
        np.testing.assert_array_equal(after["counts"], before["counts"])
        np.testing.assert_array_equal(after["means"], before["means"])
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


def test_server_refuses_unusable_database_clearly(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-db.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    for db in (garbage, tmp_path / "missing-folder" / "x.db"):
        out = subprocess.run([*FEDRECON, "server", "--insecure", "--port", "0", "--db", str(db)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert f"cannot open database {db}" in out.stderr and "Traceback" not in out.stderr
