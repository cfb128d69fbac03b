"""The holes hostile tests found (issue #25): each reproduction, failing before its fix.

Paged pulls across a restart, a retry's answer in a batch whose commit fails, cancelled and idle
PushStreams, memory held by long streams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrecon.proto.payloads import Deltas
from fedrecon.server.store import PrototypeStore


def _push(store: PrototypeStore, client: str, seq: int, ids: list[str], dim: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return store.push(client, seq, "s", Deltas(ids, rng.integers(1, 9, len(ids)), rng.normal(size=(len(ids), dim))))


@pytest.mark.parametrize("restart_after", [1, 2, 3])
def test_a_paged_pull_across_a_restart_misses_no_class(db_target, restart_after: int) -> None:
    """Hole 1: a checkpoint moved updated rows to the end and start-up loaded by rowid, so a page token
    (version, row) named other rows after a restart: c10-c14 went missing, silently. (Both backends.)"""
    ids = [f"c{i:02d}" for i in range(20)]
    store = PrototypeStore(db_target, checkpoint_every=1)
    _push(store, "a", 1, ids)
    _push(store, "b", 1, ids[5:10], seed=1)  # rewritten by the checkpoint: their rows move to the end
    seen, token, pages = {}, "", 0
    while True:
        page = store.pull("s", 0, page_token=token, max_bytes=1024 + 5 * 60)
        seen.update(zip(page.class_ids, page.counts.tolist(), strict=True))
        token, pages = page.next_page_token, pages + 1
        if not token:
            break
        if pages == restart_after:
            store.close()
            store = PrototypeStore(db_target)
    store.close()
    assert sorted(seen) == ids, f"restart after page {restart_after}: missing {sorted(set(ids) - set(seen))}"


def test_a_retry_in_the_batch_of_a_failed_commit_is_not_acknowledged(tmp_path: Path, monkeypatch) -> None:
    """Hole 3: a push and its retry in one batch, the commit fails (disk full): the original was refused
    UNAVAILABLE but the retry kept its "OK, duplicate" for a push that was never saved."""
    import sqlite3

    import pytest

    from fedrecon.server.errors import StoreUnavailable

    store = PrototypeStore(tmp_path / "s.db")
    monkeypatch.setattr(store._log, "append", lambda *a: (_ for _ in ()).throw(sqlite3.OperationalError(
        "database or disk is full")))
    rng = np.random.default_rng(0)
    counts, means = rng.integers(1, 9, 3), rng.normal(size=(3, 4))
    with store._queue_cond:  # both queued before the writer takes a batch: one batch, one failed commit
        original = store.submit_push("a", 1, "s", Deltas(["x", "y", "z"], counts, means))
        retry = store.submit_push("a", 1, "s", Deltas(["x", "y", "z"], counts, means))
    for pending in (original, retry):
        with pytest.raises(StoreUnavailable):
            pending.wait(10)
    monkeypatch.undo()
    assert store.client_record("a").last_seq == 0
    assert store.push("a", 1, "s", Deltas(["x", "y", "z"], counts, means)).duplicate is False  # the client goes on
    store.close()


def _request(client: str, seq: int, ids: list[str], dim: int = 4):
    from fedrecon.proto import codec
    from fedrecon.proto.v1 import recon_pb2 as pb

    rng = np.random.default_rng(seq)
    deltas = codec.encode_deltas(Deltas(ids, rng.integers(1, 9, len(ids)), rng.normal(size=(len(ids), dim))), "float32")
    return pb.PushRequest(client_id=client, space="s", seq=seq, deltas=deltas)


def _open_streams(stub, n: int, first_push: bool) -> list:
    """`n` PushStream calls that each send at most one push, then wait (never close their side)."""
    import queue

    calls = []
    for i in range(n):
        outbox: queue.Queue = queue.Queue()
        if first_push:
            outbox.put(_request(f"idle{i}", 1, ["x"]))
        call = stub.PushStream(iter(outbox.get, None), timeout=60)
        calls.append((call, outbox))
    if first_push:
        for call, _ in calls:
            next(call)  # the first push is answered: the server now waits for the next one
    return calls


def _stream_works(stub) -> bool:
    """Whether a new PushStream call is answered."""
    import grpc

    try:
        replies = list(stub.PushStream(iter([_request("fresh", 1, ["z"])]), timeout=5))
    except grpc.RpcError:
        return False
    return replies[0].replies[0].seq == 1


def test_cancelled_and_idle_push_streams_never_wedge_the_server(tmp_path: Path) -> None:
    """Hole 2: a stream cancelled while the server waited for its next push blocked a handler thread forever;
    ~20 of them (or 16 idle open streams) left every call DEADLINE_EXCEEDED, and SIGTERM did not end it."""
    import time

    import grpc
    from helpers import start_server, wait_until

    from fedrecon.proto.v1 import recon_pb2_grpc as rpc

    process, address = start_server(tmp_path / "s.db")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            for _ in range(25):  # 100 streams cancelled while the server waits for their next push
                for call, _ in _open_streams(stub, 4, first_push=True):
                    call.cancel()
            idle = _open_streams(stub, 24, first_push=False)  # open, nothing sent (those over the limit refused)
            started = time.monotonic()
            reply = stub.Push(_request("after", 1, ["y"]), timeout=5)
            assert reply.seq == 1 and time.monotonic() - started < 1.0
            for call, _ in idle:
                call.cancel()
            assert wait_until(lambda: _stream_works(stub), timeout=10)  # the idle streams' slots come back
        process.terminate()
        process.wait(timeout=15)  # before the fix: still running 40 s after "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_answered_push_keeps_nothing_its_caller_does_not_need() -> None:
    """Hole 4, the mechanism: each push of a stream named the one before (`after`), so an open stream kept
    every push it carried reachable; an answered push now holds only its answer."""
    store = PrototypeStore()
    rng = np.random.default_rng(0)
    first = store.submit_push("a", 1, "s", Deltas(["x"], [2], rng.normal(size=(1, 4))))
    second = store.submit_push("a", 2, "s", Deltas(["x"], [3], rng.normal(size=(1, 4))), after=first)
    assert second.wait().version == 2
    assert second.after is None and second.deltas is None and second.sums is None and second.packed is None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _server_rss_after(tmp_path: Path, name: str, streams: int, pushes: int) -> int:
    """RSS (KiB) of a server process after `pushes` pushes of 4 KiB sent on `streams` streams, the last
    stream still open when measured."""
    import queue

    import grpc
    from helpers import start_server

    from fedrecon.proto.v1 import recon_pb2_grpc as rpc

    ids = [f"k{i}" for i in range(64)]
    template = _request("c", 1, ids, dim=16)  # 4.1 KB on the wire
    process, address = start_server(tmp_path / f"{name}.db")
    try:
        with grpc.insecure_channel(address) as channel:
            stub, seq, per_stream = rpc.ReconnaissanceStub(channel), 0, pushes // streams
            for stream in range(streams):
                outbox: queue.Queue = queue.Queue()
                call = stub.PushStream(iter(outbox.get, None), timeout=300)
                for _ in range(per_stream):
                    seq += 1
                    request = pb_copy(template)
                    request.seq = seq
                    outbox.put(request)
                answered = 0
                for message in call:
                    answered += len(message.replies)
                    if answered == per_stream:
                        break
                if stream == streams - 1:
                    rss = _rss_kib(process.pid)
                outbox.put(None)
                list(call)
        return rss
    finally:
        process.terminate()
        process.wait(timeout=30)


def pb_copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


@pytest.mark.slow
def test_server_memory_does_not_grow_with_the_pushes_of_one_open_stream(tmp_path: Path) -> None:
    """Hole 4: 20,000 pushes of 4.1 KB on one stream kept ~20.8 KB each alive (406 MB) until the stream ended.
    Now within 50 MB of the same pushes sent on 20 short streams."""
    short = _server_rss_after(tmp_path, "short", streams=20, pushes=20_000)
    long = _server_rss_after(tmp_path, "long", streams=1, pushes=20_000)
    assert long - short < 50 * 1024, f"one stream: {long} KiB, 20 streams: {short} KiB"


def test_class_quotas_per_space_and_per_client_refuse_with_resource_exhausted() -> None:
    """Stored classes cost memory: a space and a client have class quotas (RESOURCE_EXHAUSTED past them)."""
    from fedrecon.proto.limits import Limits
    from fedrecon.server.errors import QuotaExceeded

    store = PrototypeStore(limits=Limits(max_space_classes=10, max_client_classes=6))
    _push(store, "a", 1, [f"a{i}" for i in range(6)])
    with pytest.raises(QuotaExceeded, match="client 'a'"):
        _push(store, "a", 2, ["a0", "new"])
    _push(store, "a", 2, ["a0", "a1"])  # known classes: no new rows
    _push(store, "b", 1, [f"b{i}" for i in range(4)])
    with pytest.raises(QuotaExceeded, match="space 's' holds 10"):
        _push(store, "c", 1, ["c0"])
    assert store.client_record("c").last_seq == 0


def test_a_token_file_replaced_with_the_same_size_and_mtime_is_reloaded(tmp_path: Path) -> None:
    """Hole 9: reload keyed on (mtime, size): a same-size replacement with the old mtime (`cp -p`) kept a
    revoked token valid."""
    import os
    import shutil

    from fedrecon.server.auth import TokenStore, add_token, hash_token

    live, replacement = tmp_path / "tokens.json", tmp_path / "new.json"
    old = add_token(live, "alice")
    replacement.write_text(live.read_text().replace(hash_token(old), hash_token("another secret")))
    assert live.stat().st_size == replacement.stat().st_size
    store = TokenStore(live)
    assert store.lookup(old).client_id == "alice"
    stat = live.stat()
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shutil.copy2(replacement, live)  # cp -p: same size, same mtime, other content
    assert live.stat().st_mtime_ns == stat.st_mtime_ns
    assert store.lookup(old) is None


def test_a_database_path_with_hash_or_question_mark_serves_the_audit(tmp_path: Path) -> None:
    """Hole 10: the audit read opened an unquoted `file:` URI: a `--db` with '#' or '?' failed (UNKNOWN in
    Admin Stats) and left stray files."""
    folder = tmp_path / "odd #1 ?x"
    folder.mkdir()
    with PrototypeStore(folder / "s#1?.db") as store:
        _push(store, "a", 1, ["x"])
        store.revoke("a", actor="admin")
        assert [(kind, client) for _, kind, client, _, _ in store.audit()] == [("revoke", "a")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd #1 ?x"]


def _server_argv(db: Path, *extra: str) -> list[str]:
    from helpers import FEDRECON

    return [*FEDRECON, "server", "--host", "127.0.0.1", "--port", "0", "--db", str(db), "--insecure", *extra]


def _refused_at_start(db: Path) -> str:
    """Start a server on `db`: it must refuse with one line (returned)."""
    import subprocess

    out = subprocess.run(_server_argv(db), capture_output=True, text=True, timeout=60)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and out.stdout == "" and len(lines) == 1, out.stderr
    return lines[0]


def test_a_lost_write_ahead_log_is_refused_not_served_with_fewer_pushes(tmp_path: Path) -> None:
    """Hole 8: a cut, flipped or deleted WAL started with no warning, the same store id and fewer pushes
    (2,393 of 3,000 acknowledged), reusing versions. Now refused in one line; --repair serves what is left."""
    import os
    import signal

    from helpers import start_server

    from fedrecon.client.recon_client import ReconClient

    db = tmp_path / "s.db"
    process, address = start_server(db)
    with ReconClient(address, "a", state_path=None) as client:
        for i in range(30):
            client.push("s", [f"c{i}"], [1], np.ones((1, 4)))
    os.kill(process.pid, signal.SIGKILL)  # the pushes are in the WAL only (no checkpoint yet)
    process.wait()
    Path(f"{db}-wal").unlink()
    line = _refused_at_start(db)
    assert "acknowledged up to version 30" in line and "--repair" in line, line
    repaired, address = start_server(db, "--repair")
    with ReconClient(address, "b", state_path=None) as client:
        assert client.info()["version"] < 30
    repaired.terminate()
    repaired.wait(timeout=30)
    start_server(db)[0].terminate()  # repaired: the next start is clean


def test_damaged_stored_counts_are_refused_and_repair_rebuilds_them(tmp_path: Path) -> None:
    """Hole 8: one flipped byte in a stored count was served. Rows carry checksums, and counts must equal
    the sum of their contributions; --repair rebuilds such a class from its contributions."""
    import sqlite3

    from fedrecon.server.durable import DatabaseDamaged, checksum

    db = tmp_path / "s.db"
    with PrototypeStore(db) as store:
        _push(store, "a", 1, ["x", "y"])
        _push(store, "b", 1, ["x"], seed=1)
        truth = store.pull("s")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE classes SET count = count + 256 WHERE class_id = 'x'")  # a flipped bit
    assert "fails its checksum" in _refused_at_start(db)
    with sqlite3.connect(db) as conn:  # the same damage with a matching checksum: counts disagree
        row = conn.execute("SELECT '', space, class_id, count, sum, version FROM classes "
                           "WHERE class_id = 'x'").fetchone()
        conn.execute("UPDATE classes SET crc = ? WHERE class_id = 'x'", (checksum(*row),))
    assert "contributions add up to" in _refused_at_start(db)
    with pytest.raises(DatabaseDamaged):
        PrototypeStore(db)
    with PrototypeStore(db, repair=True) as store:
        repaired = store.pull("s")
    assert repaired.class_ids == truth.class_ids and repaired.counts.tolist() == truth.counts.tolist()
    np.testing.assert_allclose(repaired.means, truth.means, rtol=1e-12)


def test_a_gap_in_the_log_is_refused(tmp_path: Path) -> None:
    """The log must continue the checkpoint version by version: a missing operation is named, not skipped."""
    import sqlite3

    db = tmp_path / "s.db"
    with PrototypeStore(db, checkpoint_every=10**9) as store:
        for seq in range(1, 4):
            _push(store, "a", seq, [f"c{seq}"])
        store._checkpoint = lambda: None  # keep the log as it is at close
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM log WHERE version = 2")
    assert "operations 2..2 are missing" in _refused_at_start(db)
