"""Replicas: several `fedrecon server` processes on one PostgreSQL serve one federation (real processes, loopback).

Exactly-once is decided by the database whichever replica a push reaches; a replica follows the others' commits
and a pull that names what its caller saw waits until that replica has it; clients given several addresses go
on on another replica when one is SIGKILLed, with the same push numbers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import psycopg
import pytest
from helpers import ServerProcess, wait_until

from fedrecon.client.pages import decode_page
from fedrecon.client.recon_client import ReconClient
from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.trailers import MIN_VERSION
from fedrecon.proto.v1 import admin_pb2 as apb
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.errors import StoreUnavailable, VersionAhead
from fedrecon.server.follow import token_version
from fedrecon.server.pglog import connection_params
from fedrecon.server.store import PrototypeStore

SPACE = "s"
DIM = 4


def start_replicas(url: str, n: int = 3, *extra: str) -> list[ServerProcess]:
    """`n` servers on one database (stopped by the caller, each by its own handle)."""
    servers: list[ServerProcess] = []
    try:
        for _ in range(n):
            servers.append(ServerProcess(url, ["--checkpoint-every", "25", *extra]).start())
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: list[ServerProcess]) -> None:
    for server in servers:
        server.stop()


def request(client_id: str, seq: int, class_ids: list[str], counts: list[int], means: np.ndarray) -> pb.PushRequest:
    """A raw push (float64 on the wire, so integer-valued means stay exact)."""
    return pb.PushRequest(client_id=client_id, space=SPACE, seq=seq,
                          deltas=codec.encode_deltas(Deltas(class_ids, counts, means), "float64"))


def pull_all(address: str, min_version: int = 0) -> tuple[int, dict[str, tuple[int, np.ndarray]]]:
    """A full float64 pull from one server (`min_version`: as a client that saw that version asks)."""
    metadata = ((MIN_VERSION, str(min_version)),) if min_version else ()
    with grpc.insecure_channel(address) as channel:
        stub = rpc.ReconnaissanceStub(channel)
        req = pb.PullRequest(space=SPACE, since=0, dtype=pb.FLOAT64)
        out, version = {}, 0
        while True:
            reply = stub.Pull(req, metadata=metadata, timeout=30)
            page = decode_page(reply)
            out.update({c: (int(n), np.asarray(m, np.float64)) for c, n, m in zip(page.class_ids, page.counts,
                                                                                     page.means, strict=True)})
            version = reply.version
            if not reply.next_page_token:
                return version, out
            req.page_token = reply.next_page_token


def random_pushes(rng: np.random.Generator, rounds: int, per_round: int) -> list[list[tuple]]:
    """Per round, several (class_ids, counts, means) with small integer means (float64 sums stay exact)."""
    out = []
    for _ in range(rounds):
        batch = []
        for _ in range(per_round):
            ids = sorted({f"c{int(i)}" for i in rng.integers(0, 12, 3)})
            batch.append((ids, rng.integers(1, 6, len(ids)), rng.integers(-8, 9, (len(ids), DIM)).astype(float)))
        out.append(batch)
    return out


def centralised(pushes: list[tuple]) -> dict[str, tuple[int, np.ndarray]]:
    """The mean over every example of every push: exact integer totals, one division at the end."""
    counts: dict[str, int] = {}
    sums: dict[str, np.ndarray] = {}
    for ids, n, means in pushes:
        for c, k, m in zip(ids, n, means, strict=True):
            counts[c] = counts.get(c, 0) + int(k)
            sums[c] = sums.get(c, np.zeros(DIM)) + int(k) * m
    return {c: (counts[c], sums[c] / counts[c]) for c in counts}


def assert_equal_tables(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for c, (n, mean) in expected.items():
        assert got[c][0] == n, c
        np.testing.assert_array_equal(got[c][1], mean)


def test_three_replicas_one_killed_mid_stream_merge_exactly(pg_url: str, tmp_path: Path) -> None:
    servers = start_replicas(pg_url)
    addresses = [s.address for s in servers]
    try:
        plans = [random_pushes(np.random.default_rng(i), rounds=12, per_round=4) for i in range(4)]
        acked: list[int] = [0] * len(plans)
        errors: list[BaseException] = []

        def run(i: int) -> None:
            everyone = ",".join(addresses[i % 3:] + addresses[:i % 3])  # each client starts on another replica
            try:
                with ReconClient(everyone, f"client{i}", state_path=tmp_path / f"c{i}.db", retries=40,
                                 deadline=120, dtype="float64") as client:
                    for batch in plans[i]:
                        acked[i] += len(client.push_many(SPACE, batch))
            except BaseException as error:  # noqa: BLE001 - reported by the test
                errors.append(error)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(plans))]
        for t in threads:
            t.start()
        assert wait_until(lambda: sum(acked) >= 40, timeout=120)
        servers[0].kill()  # SIGKILL mid-stream: no shutdown code runs
        at_kill = sum(acked)
        for t in threads:
            t.join(180)
        assert not errors, errors
        assert acked == [sum(len(b) for b in p) for p in plans] and at_kill < sum(acked)
        expected = centralised([push for plan in plans for batch in plan for push in batch])
        with psycopg.connect(pg_url) as conn:
            top = conn.execute("SELECT version FROM head").fetchone()[0]
            checkpointed = int(conn.execute("SELECT value FROM meta WHERE key = 'checkpoint_version'").fetchone()[0])
        assert top == sum(acked) and checkpointed > 0  # one version per push: none doubled, none lost
        for address in addresses[1:]:
            assert_equal_tables(pull_all(address, min_version=top)[1], expected)

        servers[0] = ServerProcess(pg_url, ["--checkpoint-every", "25"]).start()  # loads the checkpoint + the log
        assert_equal_tables(pull_all(servers[0].address, min_version=top)[1], expected)

        _retry_on_another_replica_changes_nothing([servers[1].address, servers[2].address])
        _pull_on_a_third_replica_sees_a_push_on_the_first([s.address for s in servers], expected)
        with ReconClient(",".join(s.address for s in servers), "roundrobin", state_path=tmp_path / "rr.db",
                         dtype="float64") as client:  # the library: whichever replica answers the pull
            for k in range(6):
                ack = client.push(SPACE, [f"rr{k}"], [2], np.ones((1, DIM)))
                pulled = client.pull(SPACE, since=0)
                assert pulled.version >= ack.version
                assert pulled.counts[pulled.class_ids.index(f"rr{k}")] == 2
    finally:
        stop_all(servers)


def _retry_on_another_replica_changes_nothing(addresses: list[str]) -> None:
    push = request("retrier", 1, ["r"], [3], np.full((1, DIM), 2.0))
    with grpc.insecure_channel(addresses[0]) as a, grpc.insecure_channel(addresses[1]) as b:
        first = rpc.ReconnaissanceStub(a).Push(push, timeout=30)
        before = pull_all(addresses[1], min_version=first.version)
        again = rpc.ReconnaissanceStub(b).Push(push, timeout=30)
        assert (again.seq, again.version, again.classes, again.duplicate) == (1, first.version, 1, True)
        after = pull_all(addresses[1])
        assert after[0] == before[0] and after[1]["r"][0] == 3


def _pull_on_a_third_replica_sees_a_push_on_the_first(addresses: list[str], expected: dict) -> None:
    with grpc.insecure_channel(addresses[0]) as channel:
        for k in range(5):  # right after each push: no sleep, no polling
            ack = rpc.ReconnaissanceStub(channel).Push(request("reader", k + 1, [f"new{k}"], [1],
                                                               np.ones((1, DIM))), timeout=30)
            version, table = pull_all(addresses[2], min_version=ack.version)
            assert version >= ack.version and table[f"new{k}"][0] == 1


def test_racing_pushes_of_one_number_on_two_replicas_merge_once(pg_url: str) -> None:
    servers = start_replicas(pg_url, 2)
    try:
        stubs = [rpc.ReconnaissanceStub(grpc.insecure_channel(s.address)) for s in servers]
        for seq in range(1, 16):
            push = request("racer", seq, [f"k{seq % 3}"], [1], np.full((1, DIM), float(seq)))
            replies = race(stubs, [push, push])
            assert all(isinstance(r, pb.PushReply) for r in replies), replies
            assert replies[0].version == replies[1].version
            assert sorted(r.duplicate for r in replies) == [False, True]
        a = request("racer", 16, ["x"], [1], np.ones((1, DIM)))
        b = request("racer", 16, ["x"], [2], np.ones((1, DIM)))  # same number, other content
        replies = race(stubs, [a, b])
        codes = sorted(r.code().name if isinstance(r, grpc.RpcError) else "OK" for r in replies)
        assert codes == ["ALREADY_EXISTS", "OK"], replies
        with pytest.raises(grpc.RpcError) as gap:
            stubs[1].Push(request("racer", 18, ["x"], [1], np.ones((1, DIM))), timeout=30)
        assert gap.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expected seq 17" in gap.value.details()
        version, table = pull_all(servers[0].address, min_version=max(r.version for r in replies
                                                                           if isinstance(r, pb.PushReply)))
        assert {c: n for c, (n, _) in table.items()} == {"k0": 5, "k1": 5, "k2": 5, "x": table["x"][0]}
        assert table["x"][0] in (1, 2) and version == 16
    finally:
        stop_all(servers)


def race(stubs: list[rpc.ReconnaissanceStub], pushes: list[pb.PushRequest]) -> list:
    """Send one push to each replica at the same moment; each reply or RpcError."""
    out: list = [None] * len(stubs)
    barrier = threading.Barrier(len(stubs))

    def send(i: int) -> None:
        barrier.wait()
        try:
            out[i] = stubs[i].Push(pushes[i], timeout=30)
        except grpc.RpcError as error:
            out[i] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(stubs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_a_revoke_on_one_replica_removes_the_contributions_on_another(pg_url: str) -> None:
    servers = start_replicas(pg_url, 2)
    try:
        with grpc.insecure_channel(servers[0].address) as a:
            stub = rpc.ReconnaissanceStub(a)
            stub.Push(request("good", 1, ["x", "y"], [2, 1], np.ones((2, DIM))), timeout=30)
            stub.Push(request("bad", 1, ["x"], [5], np.full((1, DIM), 100.0)), timeout=30)
            version, table = pull_all(servers[1].address, min_version=2)
            assert table["x"][0] == 7
            revoked = arpc.AdminStub(a).RevokeClient(apb.RevokeClientRequest(client_id="bad"), timeout=30)
        version, table = pull_all(servers[1].address, min_version=revoked.version)
        assert version == revoked.version == 3
        assert table["x"][0] == 2 and table["y"][0] == 1
        np.testing.assert_array_equal(table["x"][1], np.ones(DIM))
        assert wait_until(lambda: pull_all(servers[1].address)[0] == 3)  # followers apply it without being asked
    finally:
        stop_all(servers)


def test_a_replica_behind_the_kept_log_loads_the_checkpoint_again(pg_url: str) -> None:
    """In process: B stops following; A checkpoints and drops the log B still needed; B's next batch finds the
    gap, refuses (UNAVAILABLE, nothing merged), loads the checkpoint, and the retry is merged once."""
    a, b = PrototypeStore(pg_url, checkpoint_every=1), PrototypeStore(pg_url, checkpoint_every=10**6)
    try:
        assert b._follower is not None
        b._follower.stop()  # as a replica cut off from the database would be
        a._log.retain_seconds = 0.0
        for seq in range(1, 6):
            a.push("a", seq, SPACE, Deltas(["x"], [1], np.ones((1, DIM))))
        assert wait_until(lambda: a._checkpoint_version == 5)
        with pytest.raises(StoreUnavailable, match="the log kept starts at"):
            b.push("b", 1, SPACE, Deltas(["x"], [2], np.ones((1, DIM))))
        ack = b.push("b", 1, SPACE, Deltas(["x"], [2], np.ones((1, DIM))))
        assert (ack.version, ack.duplicate) == (6, False) and b.pull(SPACE).counts.tolist() == [7]
        assert a.await_version(6) and a.pull(SPACE).counts.tolist() == [7]
    finally:
        a.close()
        b.close()


def test_a_replica_without_its_database_acknowledges_nothing_and_recovers(pg_url: str) -> None:
    store = PrototypeStore(pg_url)
    try:
        store.push("a", 1, SPACE, Deltas(["x"], [1], np.ones((1, DIM))))
        store._log._params = {**store._log._params, "port": "1"}  # as if the database went away
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (store._log.conn.info.backend_pid,))
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                store.push("a", 2, SPACE, Deltas(["y"], [1], np.ones((1, DIM))))
        store._log._params = connection_params(pg_url)  # it is back
        assert store.push("a", 2, SPACE, Deltas(["y"], [1], np.ones((1, DIM)))).version == 2
    finally:
        store.close()


@pytest.mark.slow
def test_cluster_faults_benchmark_small(pg_cluster) -> None:
    """Replicas SIGKILLed and the database itself crash-restarted (its own throwaway cluster) mid-run."""
    from fedrecon.benchmarks.cluster_faults import run
    from fedrecon.benchmarks.pg_cluster import PgCluster

    cluster = PgCluster(pg_cluster.bin_dir).start()
    try:
        result = run(cluster.create_database(), seconds=12, replicas=2, clients=2, kill_every=2.0,
                     restart_db=cluster.restart_immediate)  # a replica's restart takes a few seconds here
    finally:
        cluster.stop()
    assert result["kills"] >= 1 and result["acked"] > 0, result
    assert (result["lost"], result["doubled"], result["mismatched"]) == (0, 0, 0), result
    assert result["one_version_per_push"] and result["client_exit_codes"] == [0, 0], result


def test_a_revoke_on_one_replica_ends_the_clients_streams_on_another(pg_url: str, tmp_path: Path) -> None:
    from security_helpers import make_tokens

    path = tmp_path / "tokens.json"  # every replica reads the same token file
    tokens = make_tokens(path, clients=("bad",))
    servers = [ServerProcess(pg_url, ["--tokens", str(path)], insecure=False).start() for _ in range(2)]
    try:
        bad = (("authorization", f"Bearer {tokens['bad']}"),)
        with grpc.insecure_channel(servers[0].address) as a, grpc.insecure_channel(servers[1].address) as b:
            rpc.ReconnaissanceStub(a).Push(request("", 1, ["x"], [1], np.ones((1, DIM))), metadata=bad, timeout=30)
            watch = rpc.ReconnaissanceStub(b).Watch(pb.WatchRequest(space=SPACE), metadata=bad, timeout=60)
            assert next(watch).classes.class_ids == ["x"]
            arpc.AdminStub(a).RevokeClient(apb.RevokeClientRequest(client_id="bad"), timeout=30,
                                           metadata=(("authorization", f"Bearer {tokens['root']}"),))
            with pytest.raises(grpc.RpcError) as ended:
                for _ in watch:  # the pass that removes its classes may come first; then the stream ends
                    pass
            assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED, ended.value
    finally:
        stop_all(servers)


def test_a_pull_ahead_of_a_replica_waits_for_it_instead_of_refusing(pg_url: str) -> None:
    """In process: B does not follow on its own; a pull on B with `since` (or a page token) from A's later
    version makes B catch up first, then answers; a `since` no replica reached is still refused."""
    a, b = PrototypeStore(pg_url), PrototypeStore(pg_url)
    try:
        assert b._follower is not None
        b._follower.stop()
        for seq in range(1, 4):
            a.push("a", seq, SPACE, Deltas([f"x{seq}"], [1], np.ones((1, DIM))))
        assert b.version < 3
        assert b.pull(SPACE, since=2).class_ids == ["x3"] and b.version == 3
        for seq in (4, 5):
            a.push("a", seq, SPACE, Deltas([f"x{seq}"], [1], np.ones((1, DIM))))
        token = a.pull(SPACE, max_bytes=1100, itemsize=8).next_page_token  # one class a page, from version 5
        assert token_version(token) == 5 and b.version == 3
        page = b.pull(SPACE, page_token=token, max_bytes=1100, itemsize=8)  # B catches up first, then pages on
        assert (page.class_ids, page.version) == (["x2"], 5)
        with pytest.raises(VersionAhead):
            b.pull(SPACE, since=99)
    finally:
        a.close()
        b.close()


def test_replicas_hold_bit_identical_tables(pg_url: str) -> None:
    """Random float32 means pushed alternately on two replicas: both serve the same float64 sums, bit for bit
    (a follower applies others' operations in version order with the same math as their replica did)."""
    servers = start_replicas(pg_url, 2)
    rng = np.random.default_rng(7)
    try:
        stubs = [rpc.ReconnaissanceStub(grpc.insecure_channel(s.address)) for s in servers]
        top = 0
        for seq in range(1, 21):
            for c in range(3):
                ids = [f"k{int(i)}" for i in rng.choice(8, size=3, replace=False)]
                push = pb.PushRequest(client_id=f"c{c}", space=SPACE, seq=seq, deltas=codec.encode_deltas(
                    Deltas(ids, rng.integers(1, 9, 3), rng.normal(size=(3, DIM)).astype(np.float32)), "float32"))
                top = max(top, stubs[(seq + c) % 2].Push(push, timeout=30).version)
        tables = [pull_all(s.address, min_version=top) for s in servers]
        assert tables[0][0] == tables[1][0] == top == 60
        assert sorted(tables[0][1]) == sorted(tables[1][1])
        for cid, (count, mean) in tables[0][1].items():
            assert tables[1][1][cid][0] == count
            assert tables[1][1][cid][1].tobytes() == mean.tobytes(), cid
    finally:
        stop_all(servers)


def test_a_server_without_its_database_answers_unavailable_with_a_retry_hint(pg_url: str) -> None:
    from fedrecon.server.serve import ServerConfig, serve

    store = PrototypeStore(pg_url)
    server = serve(ServerConfig(insecure=True), store)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            assert stub.Push(request("a", 1, ["x"], [1], np.ones((1, DIM))), timeout=30).version == 1
            store._log._params = {**store._log._params, "port": "1"}  # as if the database went away
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (store._log.conn.info.backend_pid,))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Push(request("a", 2, ["y"], [1], np.ones((1, DIM))), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert dict(refused.value.trailing_metadata())["fedrecon-retry-after-ms"] == "500"
            store._log._params = connection_params(pg_url)
            assert stub.Push(request("a", 2, ["y"], [1], np.ones((1, DIM))), timeout=30).version == 2
    finally:
        server.stop(grace=1)
