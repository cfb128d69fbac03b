"""Issue #25 holes 5-7: a client neither loses nor doubles what it learned when a push fails, is refused for its
token, is killed and re-run, or meets a store whose record differs from its state (either restored from a backup,
or the state deleted). Real server processes on loopback; each test stops its own."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import FEDRECON, ServerProcess, wait_until
from security_helpers import make_tokens

from fedrecon.client.encoder import Encoder
from fedrecon.client.learner import Learner
from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.recon_client import ReconClient
from fedrecon.client.replica import Replica
from fedrecon.client.state import ClientState
from fedrecon.proto.channel import ChannelSecurity
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc

SPACE = "s"
# one push per 50 s after the first: a push waits (pending, retried under its number) long enough to kill the
# client however loaded the machine; the re-run then meets the same database served without the limit
SLOW = ["--max-pushes-per-second", "0.02", "--push-burst", "1"]


def _counts(address: str, space: str = SPACE) -> dict[str, int]:
    """The store's merged counts per class, pulled over the wire (no state)."""
    with grpc.insecure_channel(address) as channel:
        reply = rpc.ReconnaissanceStub(channel).Pull(pb.PullRequest(space=space), timeout=10)
    return dict(zip(reply.classes.class_ids, [int(c) for c in reply.classes.counts], strict=True))


def _memory(classes: dict[str, int], dim: int = 4, seed: int = 0) -> PrototypeMemory:
    """A memory whose local deltas hold `count` random examples of each class."""
    rng = np.random.default_rng(seed)
    memory = PrototypeMemory(dim)
    ids = [c for c, n in classes.items() for _ in range(n)]
    memory.add_examples(ids, rng.standard_normal((len(ids), dim)))
    return memory


def _learn(state: Path, client_id: str, classes: dict[str, int], seed: int) -> None:
    """Learn offline into a client state (as `client learn --offline` does): local deltas only."""
    with ClientState(state, client_id) as st:
        memory = st.load_memory(SPACE)
        rng = np.random.default_rng(seed)
        ids = [c for c, n in classes.items() for _ in range(n)]
        memory.add_examples(ids, rng.standard_normal((len(ids), 4)))
        st.save_local(SPACE, memory)


def _sync(address: str, state: Path, client_id: str, token: str | None = None) -> dict:
    """Push a state's local memory and pull, as `client sync` does; returns what the pull saw."""
    security = ChannelSecurity(token=token) if token else None
    with ClientState(state, client_id) as st, ReconClient(address, client_id, state=st, security=security) as client:
        replica = Replica(client_id, SPACE, state=st)  # the replica persists its pull
        synced = replica.sync(client.merger)
        acks, pulled = synced.acks, synced.pulled
        reset = pulled.reset
        table = replica.memory.global_table
        return {"acks": [(a.seq, a.duplicate) for a in acks], "reset": reset,
                "table": {table.class_ids[r]: int(table.counts[r]) for r in table.live_rows()}}


@pytest.fixture
def server(tmp_path: Path):
    process = ServerProcess(tmp_path / "s.db").start()
    yield process
    process.stop()


# ---------------------------------------------------------------------------------------------- hole 5
@pytest.mark.parametrize("fault", ["disk full", "non-finite"])
def test_a_push_that_fails_before_it_is_recorded_loses_no_learned_class(tmp_path: Path, server, fault) -> None:
    encoder = Encoder.random(device="cpu")
    rng = np.random.default_rng(3)
    with Learner.open(encoder, "leo", server.address, state_dir=tmp_path) as learner:
        learner.add_embeddings(rng.standard_normal((6, encoder.dim)), ["a", "a", "b", "b", "c", "c"])
        if fault == "disk full":
            def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the state's disk is full
                raise sqlite3.OperationalError("database or disk is full")
            learner.state.begin_all = full
            with pytest.raises(sqlite3.OperationalError):
                learner.push()
        else:  # a class whose sums went non-finite (written before such embeddings were refused)
            learner.memory.local.add_sums(["bad"], np.array([1]), np.full((1, encoder.dim), np.nan))
            with pytest.raises(Exception, match="not finite"):
                learner.push()
            learner.memory.mark_pushed(["bad"])
        assert learner.state.all_pending == []
        learner.add_embeddings(rng.standard_normal((2, encoder.dim)), ["d", "d"])  # a long-running learner goes on
    with Learner.open(encoder, "leo", server.address, state_dir=tmp_path) as learner:
        ids, counts, _ = learner.pending()
        assert dict(zip(ids, counts.tolist(), strict=True)) == {"a": 2, "b": 2, "c": 2, "d": 2}
        learner.sync()
    assert _counts(server.address, encoder.fingerprint) == {"a": 2, "b": 2, "c": 2, "d": 2}


def test_non_finite_embeddings_are_refused_before_they_are_learned() -> None:
    memory = PrototypeMemory(3)
    with pytest.raises(ValueError, match="1 of 2 embeddings hold NaN or Inf"):
        memory.add_examples(["a", "b"], np.array([[0.0, 1.0, 2.0], [np.inf, 0.0, 0.0]]))
    assert memory.pending().class_ids == []


# ---------------------------------------------------------------------------------------------- hole 6
def test_a_push_refused_for_its_token_is_given_back_and_pushed_once_with_the_right_one(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens.json")
    process = ServerProcess(tmp_path / "s.db", ["--tokens", str(tmp_path / "tokens.json")], insecure=False).start()
    state = tmp_path / "alice.db"
    try:
        _learn(state, "alice", {"a": 5, "b": 2}, seed=1)
        with pytest.raises(grpc.RpcError) as refused:  # bob's token: PERMISSION_DENIED
            _sync(process.address, state, "alice", token=tokens["bob"])
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "back in the local memory" in refused.value.details()
        with ClientState(state, "alice") as st:  # nothing pending, nothing lost
            assert st.all_pending == [] and st.last_seq == 0
            ids, counts, _ = st.load_memory(SPACE).pending()
            assert dict(zip(ids, counts.tolist(), strict=True)) == {"a": 5, "b": 2}
        _sync(process.address, state, "alice", token=tokens["alice"])
        with ReconClient(process.address, "alice", security=ChannelSecurity(token=tokens["alice"])) as reader:
            pulled = reader.pull(SPACE)
        assert dict(zip(pulled.class_ids, pulled.counts.tolist(), strict=True)) == {"a": 5, "b": 2}
    finally:
        process.stop()


def test_cli_push_refused_for_an_admin_token_then_pushed_once(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens.json")
    process = ServerProcess(tmp_path / "s.db", ["--tokens", str(tmp_path / "tokens.json")], insecure=False).start()
    np.savez(tmp_path / "d.npz", class_ids=np.array(["x"]), counts=np.array([5]), means=np.ones((1, 2)))
    base = [*FEDRECON, "client", "push", "--server", process.address, "--client-id", "alice", "--space", SPACE,
            "--npz", str(tmp_path / "d.npz"), "--state", str(tmp_path / "alice.db")]
    try:
        refused = subprocess.run([*base, "--token", tokens["root"]], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "PERMISSION_DENIED" in refused.stderr
        ok = subprocess.run([*base, "--token", tokens["alice"]], capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["seq"] == 1
        with ReconClient(process.address, "root", security=ChannelSecurity(token=tokens["root"])) as reader:
            assert reader.pull(SPACE).counts.tolist() == [5]  # not 10
    finally:
        process.stop()


def _pending_rows(state: Path) -> int:
    """Pending pushes in a state another process holds (read-only; WAL lets readers in)."""
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_while_pending(argv: list[str], state: Path, pending: tuple[int, ...] = (1,)) -> None:
    """Run a client command and SIGKILL it once its state holds a number in `pending` of pushes not yet
    acknowledged."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _pending_rows(state) in pending or process.poll() is not None, timeout=60)
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGKILL)
    finally:
        process.communicate(timeout=30)


def test_cli_push_killed_while_pending_and_run_again_pushes_the_file_once(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "s.db", SLOW).start()
    state = tmp_path / "sam.db"
    for name, count in (("first", 3), ("d", 5)):
        np.savez(tmp_path / f"{name}.npz", class_ids=np.array([name]), counts=np.array([count]), means=np.ones((1, 2)))

    def push(name: str, *extra: str) -> list[str]:
        return [*FEDRECON, "client", "push", "--server", process.address, "--client-id", "sam", "--space", SPACE,
                "--npz", str(tmp_path / f"{name}.npz"), "--state", str(state), *extra]

    try:
        assert subprocess.run(push("first"), capture_output=True, timeout=120).returncode == 0  # uses the burst
        _kill_while_pending(push("d"), state)
        process.stop()
        process = ServerProcess(tmp_path / "s.db").start()
        again = subprocess.run(push("d"), capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["seq"] == 2
        assert _counts(process.address) == {"first": 3, "d": 5}  # not 10
        once_more = subprocess.run(push("d"), capture_output=True, text=True, timeout=120)  # acknowledged before
        assert once_more.returncode == 0 and "already pushed as push 2" in json.loads(once_more.stdout)["note"]
        assert _counts(process.address) == {"first": 3, "d": 5}
        asked = subprocess.run(push("d", "--again"), capture_output=True, text=True, timeout=120)
        assert asked.returncode == 0 and json.loads(asked.stdout)["seq"] == 3
        assert _counts(process.address) == {"first": 3, "d": 10}  # the user asked for it
    finally:
        process.stop()


def test_after_a_killed_push_sync_says_what_is_pending_and_resumes_it_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    process = ServerProcess(db, SLOW).start()
    state = tmp_path / "kim.db"
    np.savez(tmp_path / "x.npz", class_ids=np.array(["x"]), counts=np.array([2]), means=np.ones((1, 4)))

    def command(action: str, address: str) -> list[str]:
        if action == "push":
            return [*FEDRECON, "client", "push", "--server", address, "--client-id", "kim", "--space", SPACE,
                    "--npz", str(tmp_path / "x.npz"), "--state", str(state)]
        return [*FEDRECON, "client", "sync", "--server", address, "--client-id", "kim", "--encoder", "glyphs",
                "--state-dir", str(tmp_path), "--timeout", "5", "--connect-timeout", "2"]

    try:
        _learn(state, "kim", {"warmup": 1}, seed=0)
        with ClientState(state, "kim") as st, ReconClient(process.address, "kim", state=st) as client:
            client.push_memory(st.load_memory(SPACE), SPACE)  # push 1 takes the burst
        _kill_while_pending(command("push", process.address), state)  # push 2 recorded, never acknowledged
        address = process.address
        process.stop()  # the server is down: the failure names what is pending and the command that sends it
        down = subprocess.run(command("sync", address), capture_output=True, text=True, timeout=120)
        assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
        assert "1 pushes (seq 2..2) recorded and not yet acknowledged" in down.stderr
        assert "`fedrecon client sync`" in down.stderr
        pushing = subprocess.run([*command("push", address), "--connect-timeout", "2"], capture_output=True,
                                 text=True, timeout=120)
        assert pushing.returncode == 2 and len(pushing.stderr.strip().splitlines()) == 1, pushing.stderr
        assert "1 pushes (seq 2..2) stay pending" in pushing.stderr and "run the same command again" in pushing.stderr
        process = ServerProcess(db).start()
        up = subprocess.run(command("sync", process.address), capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["resumed_pushes"] == 1
        assert _counts(process.address) == {"warmup": 1, "x": 2}
    finally:
        process.stop()


def _glyph_pngs(root: Path, classes: int, seed: int, prefix: str = "g") -> None:
    """Glyph drawings as PNG files in the ImageFolder layout `root/<prefix><k>/<i>.png` (6 per class)."""
    from PIL import Image

    from fedrecon.client.data.glyphs import make_glyphs

    glyphs = make_glyphs(classes, 6, seed=seed, image_size=28)
    for k, cid in enumerate(glyphs.class_ids):
        (root / f"{prefix}{k}").mkdir(parents=True)
        for i, pixels in enumerate(glyphs.pixels[glyphs.indices(cid)]):
            Image.fromarray(pixels[0]).save(root / f"{prefix}{k}" / f"{i}.png")


def test_a_killed_learn_is_finished_by_sync_exactly_once(tmp_path: Path) -> None:
    _glyph_pngs(tmp_path / "warm", 1, seed=1, prefix="w")
    _glyph_pngs(tmp_path / "images", 2, seed=2)
    db = tmp_path / "s.db"
    server = ServerProcess(db, SLOW).start()

    def command(action: str, *paths: Path) -> list[str]:
        return [*FEDRECON, "client", action, "--server", server.address, "--client-id", "lea", "--encoder",
                "glyphs", "--state-dir", str(tmp_path), *map(str, paths)]

    try:
        assert subprocess.run(command("learn", tmp_path / "warm"), capture_output=True, timeout=180).returncode == 0
        _kill_while_pending(command("learn", tmp_path / "images"), tmp_path / "lea.db")
        server.stop()
        server = ServerProcess(db).start()
        finished = subprocess.run(command("sync"), capture_output=True, text=True, timeout=180)
        assert finished.returncode == 0, finished.stderr
        out = json.loads(finished.stdout)
        assert out["resumed_pushes"] == 1 and out["classes_pushed"] == 2  # the learn's push, sent now
        space = server_space(server.address)
        assert _counts(server.address, space) == {"w0": 6, "g0": 6, "g1": 6}  # the killed learn's classes once
    finally:
        server.stop()


def server_space(address: str) -> str:
    """The one space a store holds."""
    with grpc.insecure_channel(address) as channel:
        info = rpc.ReconnaissanceStub(channel).Info(pb.InfoRequest(), timeout=10)
    return info.spaces[0].space


# ---------------------------------------------------------------------------------------------- hole 7
def test_a_restored_state_whose_local_deltas_were_pushed_since_confirms_them(tmp_path: Path, server) -> None:
    state = tmp_path / "rita.db"
    _learn(state, "rita", {"a": 2}, seed=1)
    _sync(server.address, state, "rita")  # push 1
    _learn(state, "rita", {"b": 3}, seed=2)
    shutil.copy(state, tmp_path / "backup.db")  # the backup holds b learned, not yet pushed
    _sync(server.address, state, "rita")  # push 2: b
    shutil.copy(tmp_path / "backup.db", state)  # restored: b again in its local memory, last seq 1
    seen = _sync(server.address, state, "rita")  # b's content is the store's push 2: confirmed, not doubled
    assert seen["acks"] == [(2, True)]
    for k in range(3):  # and the pushes after it go through
        _learn(state, "rita", {f"c{k}": 1}, seed=10 + k)
        assert _sync(server.address, state, "rita")["acks"] == [(3 + k, False)]
    assert _counts(server.address) == {"a": 2, "b": 3, "c0": 1, "c1": 1, "c2": 1}


def test_a_state_restored_from_a_backup_with_new_learning_pushes_it_after_the_store(tmp_path: Path, server) -> None:
    state = tmp_path / "rita.db"
    _learn(state, "rita", {"a": 2}, seed=1)
    _sync(server.address, state, "rita")
    shutil.copy(state, tmp_path / "backup.db")
    _learn(state, "rita", {"b": 3}, seed=2)
    _sync(server.address, state, "rita")  # push 2, after the backup
    shutil.copy(tmp_path / "backup.db", state)
    _learn(state, "rita", {"c": 4}, seed=3)  # other content under the same number 2: was ALREADY_EXISTS forever
    assert _sync(server.address, state, "rita")["acks"] == [(3, False)]
    _learn(state, "rita", {"d": 1}, seed=4)
    assert _sync(server.address, state, "rita")["acks"] == [(4, False)]
    assert _counts(server.address) == {"a": 2, "b": 3, "c": 4, "d": 1}


def test_a_deleted_client_state_follows_the_store_and_pushes_what_it_learns(tmp_path: Path, server) -> None:
    state = tmp_path / "dan.db"
    np.savez(tmp_path / "d.npz", class_ids=np.array(["f"]), counts=np.array([7]), means=np.ones((1, 4)))
    push = [*FEDRECON, "client", "push", "--server", server.address, "--client-id", "dan", "--space", SPACE,
            "--npz", str(tmp_path / "d.npz"), "--state", str(state)]
    _learn(state, "dan", {"a": 2}, seed=1)
    _sync(server.address, state, "dan")
    assert subprocess.run(push, capture_output=True, timeout=120).returncode == 0  # push 2
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    again = subprocess.run(push, capture_output=True, text=True, timeout=120)  # the store's last push: not doubled
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["seq"] == 2
    _learn(state, "dan", {"b": 3}, seed=2)
    seen = _sync(server.address, state, "dan")
    assert seen["acks"] == [(3, False)] and seen["table"] == {"a": 2, "b": 3, "f": 7}
    assert _counts(server.address) == {"a": 2, "b": 3, "f": 7}


def _backup(db: Path, to: Path) -> None:
    """Copy a stopped server's database (and its WAL, if any) as an operator's backup would."""
    for suffix in ("", "-wal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", f"{to}{suffix}")


def _restore(backup: Path, db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    _backup(backup, db)


def test_a_server_restored_from_a_backup_gets_the_lost_pushes_again_and_pulls_start_over(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    server = ServerProcess(db).start()
    alice, bob, carol = tmp_path / "alice.db", tmp_path / "bob.db", tmp_path / "carol.db"
    try:
        _learn(alice, "alice", {"a": 2}, seed=1)
        _sync(server.address, alice, "alice")  # push 1, version 1
        server.stop()
        _backup(db, tmp_path / "backup.db")
        server = ServerProcess(db).start()
        for k in range(2):  # pushes 2 and 3 of alice (versions 2, 3): lost with the restore
            _learn(alice, "alice", {f"b{k}": 3}, seed=2 + k)
            _sync(server.address, alice, "alice")
        assert _sync(server.address, bob, "bob")["table"] == {"a": 2, "b0": 3, "b1": 3}  # bob is at version 3
        server.stop()
        _restore(tmp_path / "backup.db", db)  # as the server's "damaged contents" message advises
        server = ServerProcess(db, ["--repair"]).start()  # it refuses a restored database without it
        for k in range(3):  # carol's pushes carry the store past bob's version 3 (to 4)
            _learn(carol, "carol", {f"c{k}": 1}, seed=20 + k)
        _sync(server.address, carol, "carol")
        _learn(carol, "carol", {"c3": 1}, seed=30)
        _sync(server.address, carol, "carol")
        seen = _sync(server.address, bob, "bob")  # bob's since 3 is from the lost history: pull from 0
        assert seen["reset"] and seen["table"] == {"a": 2, "c0": 1, "c1": 1, "c2": 1, "c3": 1}
        assert _sync(server.address, alice, "alice")["acks"] == [(2, False), (3, False)]  # sent again
        assert _sync(server.address, alice, "alice")["acks"] == []  # the same command again: nothing more
        assert _counts(server.address) == {"a": 2, "b0": 3, "b1": 3, "c0": 1, "c1": 1, "c2": 1, "c3": 1}
        seen = _sync(server.address, bob, "bob")
        assert not seen["reset"] and seen["table"] == _counts(server.address)
        _learn(alice, "alice", {"e": 1}, seed=9)
        assert _sync(server.address, alice, "alice")["acks"] == [(4, False)]  # and alice goes on from there
    finally:
        server.stop()


def test_a_plain_server_restart_costs_one_duplicate_answer_and_no_full_pull(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    server = ServerProcess(db).start()
    state = tmp_path / "ann.db"
    try:
        _learn(state, "ann", {"a": 2}, seed=1)
        _sync(server.address, state, "ann")
        server.stop()
        server = ServerProcess(db).start()
        seen = _sync(server.address, state, "ann")
        assert seen["acks"] == [] and not seen["reset"] and seen["table"] == {"a": 2}
        assert _counts(server.address) == {"a": 2}
    finally:
        server.stop()


# ------------------------------------------------------------------------------ faults the issue did not name
def test_a_multi_push_sync_killed_between_two_pushes_then_run_twice_pushes_everything_once(tmp_path: Path) -> None:
    from fedrecon.client.encoder import load_encoder

    space = load_encoder("glyphs").fingerprint
    dim = load_encoder("glyphs").dim
    db = tmp_path / "s.db"
    server = ServerProcess(db, ["--max-classes-per-push", "2", *SLOW]).start()
    state = tmp_path / "max.db"
    with ClientState(state, "max") as st:
        memory = st.load_memory(space)
        memory.add_examples([f"k{i}" for i in range(5) for _ in range(i + 1)], np.ones((15, dim)))
        st.save_local(space, memory)

    def sync() -> list[str]:
        return [*FEDRECON, "client", "sync", "--server", server.address, "--client-id", "max", "--encoder", "glyphs",
                "--state-dir", str(tmp_path)]

    try:
        _kill_while_pending(sync(), state, pending=(1, 2))  # 3 pushes recorded; killed after the first merged
        server.stop()
        server = ServerProcess(db, ["--max-classes-per-push", "2"]).start()
        first = subprocess.run(sync(), capture_output=True, text=True, timeout=180)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["resumed_pushes"] in (1, 2)
        second = subprocess.run(sync(), capture_output=True, text=True, timeout=180)
        assert second.returncode == 0 and json.loads(second.stdout)["pushes"] == 0
        assert _counts(server.address, space) == {f"k{i}": i + 1 for i in range(5)}
        with ClientState(state, "max") as st:
            assert st.last_seq == 3 and st.all_pending == [] and [p.seq for p in st.history()] == [1, 2, 3]
    finally:
        server.stop()


def test_a_backlog_refused_for_its_token_on_a_stream_goes_back_whole(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens.json")
    process = ServerProcess(tmp_path / "s.db", ["--tokens", str(tmp_path / "tokens.json"),
                                                 "--max-classes-per-push", "1"], insecure=False).start()
    state = tmp_path / "alice.db"
    try:
        _learn(state, "alice", {"a": 1, "b": 2, "c": 3}, seed=1)  # three pushes, sent on one PushStream call
        with pytest.raises(grpc.RpcError, match="3 of them back in the local memory"):
            _sync(process.address, state, "alice", token=tokens["bob"])
        _learn(state, "alice", {"a": 1}, seed=2)  # learning goes on meanwhile
        assert _sync(process.address, state, "alice", token=tokens["alice"])["acks"] == [(1, False), (2, False),
                                                                                        (3, False)]
        with ReconClient(process.address, "root", security=ChannelSecurity(token=tokens["root"])) as reader:
            pulled = reader.pull(SPACE)
        assert dict(zip(pulled.class_ids, pulled.counts.tolist(), strict=True)) == {"a": 2, "b": 2, "c": 3}
    finally:
        process.stop()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_the_client_computes_the_digest_the_store_keeps(tmp_path: Path, dtype: str) -> None:
    from fedrecon.client.state import request_digest
    from fedrecon.server.serve import ServerConfig, serve
    from fedrecon.server.store import PrototypeStore

    server = serve(ServerConfig(insecure=True), PrototypeStore(tmp_path / "s.db"))
    try:
        with ReconClient(server.address, "dora", state_path=tmp_path / "d.db", dtype=dtype) as client:
            means = np.random.default_rng(0).standard_normal((3, 5)) / 3
            client.push(SPACE, ["a", "b", "c"], [1, 2, 3], means)
            kept = client.state.pushed(1)
            assert kept is not None and kept.digest == request_digest(SPACE, kept.request)
            gap = pb.PushRequest.FromString(kept.request)
            gap.seq = 5
            with pytest.raises(grpc.RpcError) as refused:  # a seq refusal names the last merged push's digest
                client.merger.stub.Push(gap, timeout=5)
            assert dict(refused.value.trailing_metadata())["fedrecon-last-digest"] == kept.digest
        assert server.store.client_record("dora").last_digest == kept.digest
    finally:
        server.stop(1)


def test_the_history_keeps_the_last_pushes_only(tmp_path: Path) -> None:
    from fedrecon.server.serve import ServerConfig, serve
    from fedrecon.server.store import PrototypeStore

    server = serve(ServerConfig(insecure=True), PrototypeStore(None))
    try:
        with ClientState(tmp_path / "h.db", "hal", history_keep=3) as st, \
                ReconClient(server.address, "hal", state=st) as client:
            for k in range(17):
                client.push(SPACE, [f"c{k}"], [1], np.ones((1, 2)))
            assert [p.seq for p in st.history()] == [14, 15, 16, 17]  # pruned at 16: 14..16 kept, then 17
    finally:
        server.stop(1)


def test_lost_answers_are_confirmed_by_a_retry_on_a_server_that_sends_no_digest(tmp_path: Path, monkeypatch) -> None:
    """An older server names the expected seq only: the pending push of that number, answered as a retry, confirms
    it and the pending pushes before it (the logic kept from before digests)."""
    from fedrecon.client import reconcile
    from fedrecon.server.serve import ServerConfig, serve
    from fedrecon.server.store import PrototypeStore

    real = reconcile.sequence_error

    def without_digest(error):  # noqa: ANN001, ANN202
        found = real(error)
        if found is not None:
            found.digest = ""
        return found

    monkeypatch.setattr(reconcile, "sequence_error", without_digest)
    server = serve(ServerConfig(insecure=True), PrototypeStore(None))
    try:
        with ReconClient(server.address, "olly", state_path=tmp_path / "o.db") as client:
            requests = [client.outbox._request(SPACE, Deltas([f"c{i}"], [i], np.ones((1, 4))), None, seq=i)
                        for i in range(1, 4)]
            client.state.begin_all([(r.seq, SPACE, r.SerializeToString()) for r in requests])
            for request in requests[:2]:
                client.merger.stub.Push(request, timeout=5)  # merged, answers lost
            client.outbox._stream_pending = lambda requests: []  # noqa: ARG005 - no stream: one at a time
            acks = client.resume()
            assert acks is not None and client.state.last_seq == 3 and client.state.all_pending == []
        assert _counts(server.address) == {"c1": 1, "c2": 2, "c3": 3}
    finally:
        server.stop(1)


def test_epochs_tell_a_restored_history_from_the_lost_one(tmp_path: Path) -> None:
    from fedrecon.server.durable import DatabaseDamaged
    from fedrecon.server.errors import VersionAhead
    from fedrecon.server.store import PrototypeStore

    db = tmp_path / "e.db"

    def push(store: PrototypeStore, seq: int) -> None:
        store.push("c", seq, SPACE, Deltas([f"k{seq}"], np.array([1]), np.ones((1, 2))))

    with PrototypeStore(db) as store:
        push(store, 1)
        first = store.epoch_of(1)
    _backup(db, tmp_path / "backup.db")
    with PrototypeStore(db) as store:  # a plain restart: the history goes on, in the same epoch
        assert store.epoch_of(1) == first and store.epoch == first
        store.check_since(1, first)
        push(store, 2)
        push(store, 3)
        lost = store.epoch_of(3)
    _restore(tmp_path / "backup.db", db)
    with pytest.raises(DatabaseDamaged, match="acknowledged up to version 3"):
        PrototypeStore(db)  # the restore is noticed (the high-water mark) ...
    with PrototypeStore(db, repair=True) as store:  # ... and served on purpose: a new epoch where history forks
        store.check_since(1, first)  # before the fork: the same history
        with pytest.raises(VersionAhead):
            store.check_since(3, lost)  # ahead of the restored store
        push(store, 2)
        push(store, 3)
        with pytest.raises(VersionAhead, match="pull again with since=0"):
            store.check_since(3, lost)  # caught up, but another history
        store.check_since(3, store.epoch_of(3))


def test_a_new_state_confirms_only_the_push_whose_content_the_store_has(tmp_path: Path) -> None:
    """A deleted state, then new learning and the store's last push again in one backlog: the latter is confirmed
    by its digest, the new learning is numbered after the store's pushes and merged once."""
    from fedrecon.server.serve import ServerConfig, serve
    from fedrecon.server.store import PrototypeStore

    server = serve(ServerConfig(insecure=True), PrototypeStore(None))
    y = (["y"], [4], np.full((1, 2), 0.5))
    try:
        with ReconClient(server.address, "zed", state_path=tmp_path / "old.db") as client:
            client.push(SPACE, ["a"], [1], np.ones((1, 2)))
            client.push(SPACE, ["b"], [2], np.ones((1, 2)))
            client.push(SPACE, *y)  # push 3: the store's last
        with ReconClient(server.address, "zed", state_path=tmp_path / "new.db") as client:
            acks = client.push_many(SPACE, [(["x"], [3], np.ones((1, 2))), y])
            assert sorted((a.seq, a.duplicate) for a in acks) == [(3, True), (4, False)]
            assert client.state.last_seq == 4 and client.state.all_pending == []
        assert _counts(server.address) == {"a": 1, "b": 2, "y": 4, "x": 3}
    finally:
        server.stop(1)
