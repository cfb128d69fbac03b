"""The client's durable state: bound to one store, nothing lost or doubled across crashes, limits respected."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import FEDRECON, free_port

from fedrecon.client.encoder import Encoder
from fedrecon.client.learner import Learner
from fedrecon.client.recon_client import PushRefused, ReconClient
from fedrecon.client.state import ClientState, StateError, StoreMismatch
from fedrecon.proto.limits import Limits
from fedrecon.proto.payloads import Deltas
from fedrecon.server.serve import ReconServer, ServerConfig, serve
from fedrecon.server.store import PrototypeStore


def _server(path: Path, **limits: int) -> ReconServer:
    return serve(ServerConfig(insecure=True), PrototypeStore(path, limits=Limits(**limits)))


def _counts(server: ReconServer, space: str = "s") -> dict[str, int]:
    pulled = server.store.pull(space)
    return dict(zip(pulled.class_ids, pulled.counts.tolist(), strict=True))


class Flaky(Exception):
    """Stands for the process dying after the push was recorded."""


def test_a_state_used_against_a_second_server_never_changes_the_first(tmp_path: Path) -> None:
    first, second = _server(tmp_path / "a.db"), _server(tmp_path / "b.db")
    state = tmp_path / "alice.db"
    try:
        with ReconClient(first.address, "alice", state_path=state) as client:
            client.push("s", ["x"], [1], np.ones((1, 2)))
        # a push recorded for the first store, not yet acknowledged (the process died), then the second server
        with ReconClient(first.address, "alice", state_path=state) as client:
            request = client.outbox._request("s", Deltas(["y"], [2], np.ones((1, 2))), None)
            client.state.begin(request.seq, "s", request.SerializeToString())
        with ReconClient(second.address, "alice", state_path=state) as client, \
                pytest.raises(StoreMismatch, match=f"bound to store {first.store.store_id}"):
            client.push("s", ["z"], [5], np.ones((1, 2)))
        assert _counts(second) == {} and second.store.version == 0
        assert _counts(first) == {"x": 1}
        with ReconClient(first.address, "alice", state_path=state) as client:
            acks = client.push_memory(Learner(Encoder.random(device="cpu")).memory, "s")  # resumes the pending push
        assert [a.seq for a in acks] == [2]
        assert _counts(first) == {"x": 1, "y": 2} and _counts(second) == {}
    finally:
        first.stop(1)
        second.stop(1)


def test_a_crash_between_recording_and_acknowledging_loses_and_doubles_nothing(tmp_path: Path) -> None:
    server = _server(tmp_path / "s.db")
    encoder = Encoder.random(device="cpu")
    rng = np.random.default_rng(0)
    images = rng.random((12, 1, 28, 28)).astype(np.float32) * 0.4
    labels = [f"c{i % 3}" for i in range(12)]
    try:
        with Learner.open(encoder, "bob", server.address, state_dir=tmp_path) as learner:
            learner.learn(images, labels)
            client = learner.server

            def die(request):  # noqa: ANN001, ANN202 - recorded as pending, then the process "dies"
                raise Flaky

            learner.replica.outbox(client.merger)._send_push = die
            with pytest.raises(Flaky):
                learner.sync()
            assert client.state.pending is not None and not learner.memory.pending()[0]
            assert sorted(learner.class_ids()) == ["c0", "c1", "c2"]  # in-flight classes still answer
        assert _counts(server, encoder.fingerprint) == {}
        with Learner.open(encoder, "bob", server.address, state_dir=tmp_path) as learner:  # restart
            summary = learner.sync()
            assert summary["seq"] == 1 and summary["known_classes"] == 3
            learner.sync()  # nothing pending: nothing sent again
        assert _counts(server, encoder.fingerprint) == {"c0": 4, "c1": 4, "c2": 4}
        assert server.store.client_record("bob").last_seq == 1
    finally:
        server.stop(1)


def test_offline_learning_is_pushed_by_the_next_sync_and_survives_restarts(tmp_path: Path) -> None:
    server = _server(tmp_path / "s.db")
    encoder = Encoder.random(device="cpu")
    images = np.random.default_rng(1).random((6, 1, 28, 28)).astype(np.float32) * 0.4
    try:
        with Learner.open(encoder, "eve", None, state_dir=tmp_path) as learner:
            learner.learn(images, ["a", "a", "b", "b", "c", "c"])
        with Learner.open(encoder, "eve", None, state_dir=tmp_path) as learner:
            assert sorted(learner.pending()[0]) == ["a", "b", "c"]
            expected = learner.classify(images[:1])[0]
        with Learner.open(encoder, "eve", server.address, state_dir=tmp_path) as learner:
            assert learner.sync()["classes_pushed"] == 3
            assert learner.classify(images[:1])[0].label == expected.label
        with Learner.open(encoder, "eve", None, state_dir=tmp_path) as learner:  # the pulled table persisted
            assert sorted(learner.class_ids()) == ["a", "b", "c"] and not learner.pending()[0]
    finally:
        server.stop(1)


def test_large_memories_are_pushed_within_the_server_limits(tmp_path: Path) -> None:
    server = _server(tmp_path / "s.db", max_classes_per_push=10)
    memory = Learner(Encoder.random(device="cpu")).memory
    memory.add_examples([f"k{i}" for i in range(25)], np.ones((25, 64)))
    try:
        with ReconClient(server.address, "big", state_path=tmp_path / "big.db") as client:
            acks = client.push_memory(memory, "s")
        assert [a.classes for a in acks] == [10, 10, 5] and [a.seq for a in acks] == [1, 2, 3]
        assert len(_counts(server)) == 25
    finally:
        server.stop(1)


def test_a_permanent_refusal_drops_the_push_keeping_a_copy(tmp_path: Path) -> None:
    server = _server(tmp_path / "s.db")
    try:
        with ReconClient(server.address, "dora", state_path=tmp_path / "d.db") as client:
            client.push("s", ["a"], [1], np.ones((1, 4)))
            with pytest.raises(PushRefused, match="INVALID_ARGUMENT"):
                client.push("s", ["b"], [1], np.ones((1, 3)))  # the space has dim 4
            assert client.state.pending is None
            assert [(seq, code) for seq, _, code, _ in client.state.dropped()] == [(2, "INVALID_ARGUMENT")]
            assert client.push("s", ["c"], [1], np.ones((1, 4))).seq == 2
        assert _counts(server) == {"a": 1, "c": 1}
    finally:
        server.stop(1)


def test_state_files_refuse_misuse_clearly(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with ClientState(path, "x"), pytest.raises(StateError, match="in use by another process"):
        ClientState(path, "x", lock_timeout=0.2)
    with pytest.raises(StateError, match="belongs to client 'x'"):
        ClientState(path, "y")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 50)
    with pytest.raises(StateError, match="not a fedrecon client state"):
        ClientState(tmp_path / "junk.db", "x")
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (a)").connection.commit()
    with pytest.raises(StateError, match="something else"):
        ClientState(foreign, "x")


def test_an_unreachable_server_fails_fast_in_one_line_naming_it() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = subprocess.run([*FEDRECON, "client", "info", "--server", address], capture_output=True, text=True,
                         timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 2 and elapsed < 10, (out.returncode, elapsed)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "Traceback" not in out.stderr


def test_library_calls_fail_fast_too() -> None:
    with ReconClient(f"127.0.0.1:{free_port()}", "z", connect_timeout=0.5) as client, \
            pytest.raises(ConnectionError, match="no fedrecon server reachable"):
        client.info()
    with ReconClient(f"127.0.0.1:{free_port()}", "z", connect_timeout=None, timeout=0.2, retries=100,
                     deadline=1.0) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            client.info()
        assert time.monotonic() - started < 5  # retries stop at the deadline, not after 100 attempts


def _glyph_folder(root: Path, classes: int, seed: int, name: str, dark_ink: bool = False, size: int = 28) -> None:
    """Write glyph drawings as PNG files in the ImageFolder layout `root/<name>K/<i>.png` (6 per class)."""
    from PIL import Image

    from fedrecon.client.data.glyphs import make_glyphs

    glyphs = make_glyphs(classes, 6, seed=seed, image_size=28)
    for k, cid in enumerate(glyphs.class_ids):
        folder = root / f"{name}{k}"
        folder.mkdir(parents=True)
        for i, pixels in enumerate(glyphs.pixels[glyphs.indices(cid)]):
            Image.fromarray(255 - pixels[0] if dark_ink else pixels[0]).resize((size, size)).save(folder / f"{i}.png")


def test_cli_learn_offline_with_a_label_then_sync_and_classify(tmp_path: Path) -> None:
    _glyph_folder(tmp_path / "images", 3, seed=5, name="class", size=64)  # any size: the encoder resizes
    server = _server(tmp_path / "s.db")
    base = [*FEDRECON, "client"]
    opts = ["--server", server.address, "--client-id", "gus", "--encoder", "glyphs", "--state-dir", str(tmp_path)]
    try:
        out = subprocess.run([*base, "learn", *opts, "--offline", "--label", "first", str(tmp_path / "images/class0")],
                             capture_output=True, text=True, timeout=120, check=True)
        assert '"seq": null' in out.stdout and '"examples": 6' in out.stdout
        assert server.store.version == 0
        out = subprocess.run([*base, "sync", *opts], capture_output=True, text=True, timeout=120, check=True)
        assert '"classes_pushed": 1' in out.stdout
        subprocess.run([*base, "learn", *opts, str(tmp_path / "images")], capture_output=True, text=True,
                       timeout=120, check=True)
        assert _counts(server, server.store.info()["spaces"][0]["space"]) == {"first": 6, "class0": 6, "class1": 6,
                                                                              "class2": 6}
        out = subprocess.run([*base, "classify", *opts, "--top-k", "3", str(tmp_path / "images/class2/0.png")],
                             capture_output=True, text=True, timeout=120, check=True)
        path, label, distance, runner = out.stdout.strip().split("\t")
        assert label == "class2" and float(distance) >= 0 and runner.startswith("runner-up: ")
    finally:
        server.stop(1)


def test_experiments_and_pretraining_run_on_an_image_folder(tmp_path: Path) -> None:
    import json

    _glyph_folder(tmp_path / "images", 8, seed=9, name="glyph", dark_ink=True)  # dark ink on white, as scanned
    out = subprocess.run([*FEDRECON, "pretrain", "--dataset", "folder", "--data-dir", str(tmp_path / "images"),
                          "--invert", "--out", str(tmp_path / "mine.pt"), "--ways", "3", "--shots", "1",
                          "--queries", "2", "--episodes", "3", "--val-every", "3", "--val-ways", "2",
                          "--val-episodes", "5", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    info = json.loads(subprocess.run([*FEDRECON, "encoder", "info", str(tmp_path / "mine.pt")], capture_output=True,
                                     text=True, timeout=120, check=True).stdout)
    assert info["preprocessing"]["invert"] is True and info["dataset"] == "folder"
    out = subprocess.run([*FEDRECON, "experiment", "omniglot-cil", "--dataset", "folder", "--data-dir",
                          str(tmp_path / "images"), "--encoder", str(tmp_path / "mine.pt"), "--methods",
                          "fedrecon,centralized", "--runs", "1", "--set", "protocol.classes=8", "--set",
                          "protocol.train_shots=4", "--set", "protocol.test_shots=2", "--set",
                          "protocol.checkpoints=[4,8]", "--quiet", "--out", str(tmp_path / "exp")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert results["dataset"]["name"] == "folder:images" and results["dataset"]["classes"] == 8
    assert results["encoder"]["fingerprint"] == info["fingerprint"]
    assert results["methods"]["fedrecon"]["final_accuracy"] == results["methods"]["centralized"]["final_accuracy"]


def test_an_oversized_push_never_wedges_the_client(tmp_path: Path) -> None:
    from fedrecon.proto import codec
    from fedrecon.proto.v1 import recon_pb2 as pb

    server = _server(tmp_path / "s.db", max_message_bytes=4096)
    try:
        with ReconClient(server.address, "olga", state_path=tmp_path / "o.db") as client:
            with pytest.raises(PushRefused, match="accepts at most 4,096"):  # refused before it is recorded
                client.push("s", ["big"], [1], np.zeros((1, 2000)))
            assert client.state.pending is None
            # a pending push too large for the server (recorded by an older client, or before a limit change)
            big = pb.PushRequest(client_id="olga", space="s", seq=1,
                                 deltas=codec.encode_deltas(Deltas(["big"], [1], np.zeros((1, 2000)))))
            client.state.begin(1, "s", big.SerializeToString())
            with pytest.raises(PushRefused, match="RESOURCE_EXHAUSTED"):
                client.push("s", ["a"], [1], np.ones((1, 2)))
            assert client.state.pending is None and client.state.dropped()[0][2] == "RESOURCE_EXHAUSTED"
            assert client.push("s", ["a"], [1], np.ones((1, 2))).seq == 1  # not wedged
        assert _counts(server) == {"a": 1}
    finally:
        server.stop(1)


def test_rate_limited_pushes_are_retried_with_the_same_number(tmp_path: Path) -> None:
    from fedrecon.server.ratelimit import RateLimits

    rate_limits = RateLimits(pushes_per_second=5, push_burst=1)
    server = serve(ServerConfig(insecure=True, rate_limits=rate_limits), PrototypeStore(tmp_path / "s.db"))
    try:
        with ReconClient(server.address, "rita", state_path=tmp_path / "r.db", retries=50, backoff=0.01) as client:
            acks = [client.push("s", [f"c{i}"], [1], np.ones((1, 2))) for i in range(4)]
        assert [a.seq for a in acks] == [1, 2, 3, 4] and server.store.version == 4
    finally:
        server.stop(1)


def test_cli_pushes_sharing_a_state_or_a_restored_backup_lose_nothing_silently(tmp_path: Path) -> None:
    import json
    import shutil

    server = _server(tmp_path / "s.db")
    state = tmp_path / "shared.db"
    npz = []
    for k in range(4):
        npz.append(tmp_path / f"d{k}.npz")
        np.savez(npz[-1], class_ids=np.array([f"c{k}"]), counts=np.array([10 + k]), means=np.ones((1, 2)))

    def push(path: Path) -> subprocess.Popen:
        return subprocess.Popen([*FEDRECON, "client", "push", "--server", server.address, "--client-id", "sam",
                                 "--space", "s", "--npz", str(path), "--state", str(state)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    try:
        both = [push(npz[0]), push(npz[1])]  # two processes, one state file: they take turns
        assert [p.wait(120) for p in both] == [0, 0], [p.stderr.read() for p in both]
        assert _counts(server) == {"c0": 10, "c1": 11}
        shutil.copy(state, tmp_path / "backup.db")
        assert push(npz[2]).wait(120) == 0  # seq 3
        shutil.copy(tmp_path / "backup.db", state)  # restored: it says seq 2 was the last
        late = push(npz[3])  # seq 3 is the store's d2: reconciled by content, pushed as seq 4
        assert late.wait(120) == 0, late.stderr.read()
        assert json.loads(late.stdout.read())["seq"] == 4
        assert push(npz[3]).wait(120) == 0  # d3 again: acknowledged before, not pushed again
        assert _counts(server) == {"c0": 10, "c1": 11, "c2": 12, "c3": 13}  # nothing lost, nothing doubled
        assert server.store.client_record("sam").last_seq == 4
    finally:
        server.stop(1)


def test_image_folders_with_mistakes_are_refused_by_name(tmp_path: Path) -> None:
    from fedrecon.client.data.folder import labelled_files
    from fedrecon.client.data.images import DataError

    _glyph_folder(tmp_path / "root", 2, seed=1, name="c")
    (tmp_path / "root" / "stray.png").write_bytes((tmp_path / "root" / "c0" / "0.png").read_bytes())
    with pytest.raises(DataError, match="outside the class folders"):
        labelled_files([tmp_path / "root"])
    assert len(labelled_files([tmp_path / "root" / "stray.png"], label="x")) == 1
    (tmp_path / "root" / "stray.png").unlink()
    (tmp_path / "root" / "empty").mkdir()
    with pytest.raises(DataError, match="class folder without images"):
        labelled_files([tmp_path / "root"])
    with pytest.raises(DataError, match="needs --label"):
        labelled_files([tmp_path / "root" / "c0" / "0.png"])


def _memory(n: int, dim: int = 4, seed: int = 0):
    """A memory with `n` classes of local deltas (counts 1..5) and the exact counts they add."""
    from fedrecon.client.memory import PrototypeMemory

    rng = np.random.default_rng(seed)
    memory = PrototypeMemory(dim)
    ids = [f"k{i:03d}" for i in range(n)]
    counts = rng.integers(1, 6, size=n)
    memory.add_examples([c for c, m in zip(ids, counts, strict=True) for _ in range(m)],
                        rng.standard_normal((int(counts.sum()), dim)))
    return memory, dict(zip(ids, counts.tolist(), strict=True))


def _record(client: ReconClient, requests: list, memory=None) -> None:  # noqa: ANN001
    """Record push requests of space "s" as pending, as `push_many` does before it sends them."""
    client.state.begin_all([(r.seq, "s", r.SerializeToString()) for r in requests], memory)


def test_a_backlog_goes_on_one_push_stream_exactly_once(tmp_path: Path) -> None:
    store = PrototypeStore(tmp_path / "s.db", limits=Limits(max_classes_per_push=100))
    server = serve(ServerConfig(insecure=True, metrics_port=0), store)
    metrics = server.metrics
    try:
        memory, expected = _memory(250)
        with ReconClient(server.address, "alice", state_path=tmp_path / "alice.db") as client:
            acks = client.push_memory(memory, "s")
            assert [a.seq for a in acks] == [1, 2, 3] and [a.classes for a in acks] == [100, 100, 50]
            assert client.state.all_pending == [] and client.state.last_seq == 3
        assert metrics.calls.labels("PushStream", "OK")._value.get() == 1
        assert metrics.calls.labels("Push", "OK")._value.get() == 0
        assert _counts(server) == expected
    finally:
        server.stop(1)


def test_a_backlog_whose_answers_were_lost_is_resumed_without_doubles(tmp_path: Path) -> None:
    """Three pushes recorded, the first merged but its answer lost (the process died): resume sends all three."""
    server = _server(tmp_path / "s.db", max_classes_per_push=100)
    state = tmp_path / "alice.db"
    try:
        memory, expected = _memory(250)
        with ReconClient(server.address, "alice", state_path=state) as client:
            class_ids, counts, means = memory.pending()
            requests = [client.outbox._request("s", Deltas(class_ids[i:i + 100], counts[i:i + 100], means[i:i + 100]),
                                               None, seq=1 + i // 100) for i in range(0, 250, 100)]
            memory.mark_pushed()
            _record(client, requests, memory)
            client.merger.stub.Push(requests[0], timeout=5)  # merged; the state never heard of it
        with ReconClient(server.address, "alice", state_path=state) as client:
            acks = client.push_memory(memory, "s")
            assert [(a.seq, a.duplicate) for a in acks] == [(1, True), (2, False), (3, False)]
        assert _counts(server) == expected and server.store.client_record("alice").last_seq == 3
    finally:
        server.stop(1)


def test_a_refused_push_in_a_backlog_is_dropped_and_the_rest_renumbered(tmp_path: Path) -> None:
    server = _server(tmp_path / "s.db", max_classes_per_push=100)
    state = tmp_path / "alice.db"
    try:
        with ReconClient(server.address, "alice", state_path=state) as client:
            first = client.outbox._request("s", Deltas(["a"], [1], np.ones((1, 4))), None, seq=1)
            wrong = client.outbox._request("s", Deltas(["b"], [2], np.ones((1, 3))), None, seq=2)  # another dim
            last = client.outbox._request("s", Deltas(["c"], [3], np.ones((1, 4))), None, seq=3)
            _record(client, [first, wrong, last])
            with pytest.raises(PushRefused, match="push 2 refused"):
                client.resume()
            assert [p.seq for p in client.state.all_pending] == [2]  # "c", now numbered 2
            assert client.state.dropped()[0][:3] == (2, "s", "INVALID_ARGUMENT")
            ack = client.resume()
            assert (ack.seq, ack.duplicate) == (2, False)
        assert _counts(server) == {"a": 1, "c": 3} and server.store.client_record("alice").last_seq == 2
    finally:
        server.stop(1)


def test_a_stream_whose_last_answers_were_lost_is_confirmed_not_refused(tmp_path: Path) -> None:
    """Pushes 1..3 of 4 merged, no answer came (the connection dropped): the store only retries its last
    push, so the client confirms 1..3 through push 3's duplicate answer and then sends 4."""
    server = _server(tmp_path / "s.db")
    try:
        with ReconClient(server.address, "alice", state_path=tmp_path / "alice.db") as client:
            requests = [client.outbox._request("s", Deltas([f"c{i}"], [i], np.ones((1, 4))), None, seq=i)
                        for i in range(1, 5)]
            _record(client, requests)
            for request in requests[:3]:
                client.merger.stub.Push(request, timeout=5)
            acks = client.push_many("s", [])
            assert [(a.seq, a.duplicate) for a in acks] == [(1, True), (2, True), (3, True), (4, False)]
            assert client.state.all_pending == [] and client.state.last_seq == 4
        assert _counts(server) == {"c1": 1, "c2": 2, "c3": 3, "c4": 4}
    finally:
        server.stop(1)


def test_pulled_means_are_kept_as_the_server_sent_them_through_a_restart(tmp_path: Path) -> None:
    """A client keeps merged means as pulled, to the bit, in memory and in its state file, and classifies with the
    pulled table itself while it learned nothing since (no copy, no conversion)."""
    from fedrecon.client.replica import Replica

    store = PrototypeStore()
    means = np.array([[0.1, 1 / 3], [0.7, 2 / 3]])
    store.push("a", 1, "s", Deltas(["x", "y"], np.array([3, 7]), means))
    means = store.pull("s", 0).means  # what the server sends: its sum / count
    with ClientState(tmp_path / "b.db", "b") as state:
        replica = Replica("b", "s", state=state)
        replica.pull(store)
        assert replica.memory.global_table.means().tobytes() == means.tobytes()
    with ClientState(tmp_path / "b.db", "b") as state:
        memory = state.load_memory("s")
        assert memory.global_table.means().tobytes() == means.tobytes()
        assert memory.union() is memory.global_table  # nothing learned since: the pulled table itself
        assert memory.classify(means[::-1]) == ["y", "x"]


def _old_state(path: Path) -> None:
    """A state file as written before pulled classes were kept as means: a `global` table of (count, sum)."""
    with ClientState(path, "c") as state:
        state.bind("store-1", "addr")
    db = sqlite3.connect(path)
    db.execute("DROP TABLE merged")
    db.execute("CREATE TABLE global (space TEXT NOT NULL, class_id TEXT NOT NULL, count INTEGER NOT NULL, "
               "sum BLOB NOT NULL, PRIMARY KEY (space, class_id))")
    db.executemany("INSERT INTO global VALUES (?, ?, ?, ?)", [("s", "x", 3, np.array([3.0, 6.0]).tobytes()),
                                                              ("s", "gone", 0, np.zeros(2).tobytes())])
    db.execute("INSERT INTO versions (space, version, dim, epoch) VALUES ('s', 5, 2, 'e1')")
    db.commit()
    db.close()


def _check_upgraded(path: Path) -> None:
    with ClientState(path, "c") as state:
        memory = state.load_memory("s")
        assert memory.global_table.class_ids == ["x", "gone"]
        np.testing.assert_array_equal(memory.global_table.counts, [3, 0])
        np.testing.assert_array_equal(memory.global_table.means(), [[1.0, 2.0], [0.0, 0.0]])
        assert (memory.global_version, memory.global_epoch, state.store_id) == (5, "e1", "store-1")
        tables = {r[0] for r in state.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "global" not in tables


def test_a_state_written_with_pulled_sums_is_upgraded_to_means_once(tmp_path: Path) -> None:
    """A state file from before pulled classes were kept as means opens with the same classes, counts and means,
    and without the old table; opening it again changes nothing."""
    _old_state(tmp_path / "old.db")
    for _ in range(2):
        _check_upgraded(tmp_path / "old.db")


def test_a_process_killed_in_the_middle_of_the_upgrade_leaves_a_state_that_upgrades_whole(tmp_path: Path) -> None:
    """SIGKILL-like death after the means are written and before the old table goes: nothing of it was committed,
    and the next open upgrades the file whole."""
    path = tmp_path / "old.db"
    _old_state(path)
    script = f"""
import os
from fedrecon.client import state, state_schema

def dying(db):
    rows = db.execute("SELECT space, class_id, count, sum FROM global").fetchall()
    db.executemany("INSERT OR REPLACE INTO merged VALUES (?, ?, ?, ?)",
                   [(s, c, n, state_schema._mean_bytes(t, n)) for s, c, n, t in rows])
    os._exit(9)

state.upgrade = dying
state.ClientState({str(path)!r}, "c")
"""
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert died.returncode == 9, died.stderr.decode()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM global").fetchone() == (2,)
    assert db.execute("SELECT COUNT(*) FROM merged").fetchone() == (0,)
    db.close()
    _check_upgraded(path)


def test_a_sync_never_parses_back_a_push_it_just_serialized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push is built once from the client's deltas: it is recorded (bytes and content digest) and sent without
    parsing its own bytes back (the server, started first, keeps its own parser)."""
    from fedrecon.client.grpc_merger import GrpcMerger
    from fedrecon.client.replica import Replica
    from fedrecon.proto.v1 import recon_pb2 as pb

    server = serve(ServerConfig(insecure=True), PrototypeStore(None))
    parsed: list[bytes] = []
    original = pb.PushRequest.FromString
    try:
        with ClientState(tmp_path / "c.db", "c") as state:
            replica = Replica("c", "s", state=state)
            replica.memory.add_examples(["a", "b", "a"], np.arange(12.0).reshape(3, 4))
            merger = GrpcMerger(server.address)
            monkeypatch.setattr(pb.PushRequest, "FromString",
                                staticmethod(lambda data: parsed.append(data) or original(data)))
            synced = replica.sync(merger)
            monkeypatch.undo()
            merger.close()
            assert [(a.seq, a.classes) for a in synced.acks] == [(1, 2)] and state.all_pending == []
            assert state.pushed(1).digest == server.store.client_record("c").last_digest  # as the server has it
        assert parsed == []
    finally:
        server.stop(1)
