"""The gRPC service in-process on loopback: statuses for bad input, health, reflection, watch, client retries."""

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import free_port

from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.recon_client import ReconClient
from fedrecon.client.reconcile import SequenceError
from fedrecon.client.replica import Replica
from fedrecon.proto import codec
from fedrecon.proto.limits import Limits
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.trailers import EXPECTED_SEQ
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore


@pytest.fixture
def server(tmp_path: Path):
    srv = serve(ServerConfig(insecure=True), PrototypeStore(
        tmp_path / "s.db", limits=Limits(max_classes_per_push=100, max_class_id_bytes=32, max_dim=128)))
    yield srv
    srv.stop(grace=1)


@pytest.fixture
def client(server):
    with ReconClient(server.address, "alice", timeout=5) as c:
        yield c


def _push(client: ReconClient, seq: int, deltas: pb.ClassDeltas, space: str = "s"):
    return client.merger.stub.Push(pb.PushRequest(client_id="alice", space=space, seq=seq, deltas=deltas), timeout=5)


def test_push_pull_info(client, server) -> None:
    ack = client.push("s", ["a", "b"], [2, 3], np.array([[1.0, 2.0], [3.0, 4.0]]), dtype="float64")
    assert (ack.seq, ack.version, ack.classes, ack.duplicate) == (1, 1, 2, False)
    pulled = client.pull("s", dtype="float64")
    assert pulled.class_ids == ["a", "b"] and pulled.counts.tolist() == [2, 3] and pulled.version == 1
    info = client.info()
    assert info["version"] == 1 and info["spaces"][0] == {"space": "s", "dim": 2, "classes": 2, "examples": 5,
                                                          "version": 1}
    assert info["limits"]["max_classes_per_push"] == 100


BAD = [
    (dict(deltas=codec.encode_deltas(Deltas(["a"], [1], np.zeros((1, 4))))), "dim 2"),
    (dict(deltas=codec.encode_deltas(Deltas(["a"], [0], np.zeros((1, 2))))), "is 0"),
    (dict(deltas=codec.encode_deltas(Deltas([""], [1], np.zeros((1, 2))))), "class_id must not be empty"),
    (dict(deltas=codec.encode_deltas(Deltas(["x" * 33], [1], np.zeros((1, 2))))), "longer than 32"),
    (dict(deltas=codec.encode_deltas(Deltas([f"c{i}" for i in range(101)], [1] * 101, np.zeros((101, 2))))),
     "limit is 100"),
    (dict(deltas=codec.encode_deltas(Deltas(["a"], [1], np.zeros((1, 200))))), "exceeds the limit 128"),
    (dict(deltas=pb.ClassDeltas(class_ids=["a"], counts=[1], means=pb.Matrix(dtype=1, dim=2, rows=1, data=b"1"))),
     "bytes"),
    (dict(deltas=pb.ClassDeltas(class_ids=["a"], counts=[1], means=pb.Matrix(
        dtype=1, dim=2, rows=1, data=np.array([np.nan, 1], "<f4").tobytes()))), "NaN"),
    (dict(space=""), "space must not be empty"),
    (dict(seq=0), "seq must start at 1"),
]


@pytest.mark.parametrize("fields,message", BAD)
def test_bad_input_gets_invalid_argument_and_changes_nothing(client, fields, message) -> None:
    client.push("s", ["a"], [1], np.zeros((1, 2)))
    before = client.pull("s", since=0, dtype="float64")
    request = dict(client_id="alice", space="s", seq=2, deltas=codec.encode_deltas(Deltas(
        ["a"], [1], np.zeros((1, 2)))))
    request.update(fields)
    with pytest.raises(grpc.RpcError) as info:
        client.merger.stub.Push(pb.PushRequest(**request), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    after = client.pull("s", since=0, dtype="float64")
    assert after.version == before.version and after.counts.tolist() == before.counts.tolist()
    assert client.push("s", ["b"], [1], np.zeros((1, 2))).seq == 2  # still serving, seq 2 still free


def test_gap_is_failed_precondition_naming_expected(client) -> None:
    client.push("s", ["a"], [1], np.zeros((1, 2)))
    with pytest.raises(grpc.RpcError) as info:
        _push(client, 5, codec.encode_deltas(Deltas(["a"], [1], np.zeros((1, 2)))))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expected seq 2" in info.value.details()
    assert dict(info.value.trailing_metadata())[EXPECTED_SEQ] == "2"
    client.state.last_seq = 7  # a state ahead of the store, with no copy of pushes 2..7: it follows the store
    assert client.push("s", ["a"], [1], np.zeros((1, 2))).seq == 2
    assert SequenceError("x", 2).expected == 2


def test_reused_seq_with_other_content_is_already_exists(client) -> None:
    client.push("s", ["a"], [50], np.zeros((1, 2)))
    with pytest.raises(grpc.RpcError) as info:
        _push(client, 1, codec.encode_deltas(Deltas(["a"], [10], np.zeros((1, 2)))))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS and "seq 1" in info.value.details()
    assert dict(info.value.trailing_metadata())[EXPECTED_SEQ] == "2"
    assert client.pull("s", since=0).counts.tolist() == [50]
    again = _push(client, 1, codec.encode_deltas(Deltas(["a"], [50], np.zeros((1, 2)))))
    assert again.duplicate and again.version == 1


def test_pull_ahead_of_store_is_failed_precondition(client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.merger.stub.Pull(pb.PullRequest(space="s", since=5), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(info.value.trailing_metadata())["fedrecon-pull-from"] == "0"
    client.push("s", ["a"], [1], np.zeros((1, 2)))
    pulled = client.pull("s", since=5)  # the client library pulls everything again, marked as a reset
    assert pulled.reset and pulled.class_ids == ["a"] and pulled.version == 1 and pulled.epoch


def test_health_and_reflection(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "fedrecon.v1.Reconnaissance"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "fedrecon.v1.Reconnaissance" in names and "grpc.health.v1.Health" in names


def test_reflection_v1_and_v1alpha_and_health_of_every_service() -> None:

    server = serve(ServerConfig(insecure=True), PrototypeStore(None))
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "fedrecon.v1.Reconnaissance", "fedrecon.v1.Admin"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            for version in ("v1", "v1alpha"):
                method = channel.stream_stream(
                    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
                requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                            reflection_pb2.ServerReflectionRequest(file_containing_symbol="fedrecon.v1.PullReply")]
                replies = list(method(iter(requests), timeout=5))
                names = {s.name for s in replies[0].list_services_response.service}
                assert {"fedrecon.v1.Reconnaissance", "fedrecon.v1.Admin", "grpc.health.v1.Health",
                        "grpc.reflection.v1.ServerReflection"} <= names
                assert replies[1].file_descriptor_response.file_descriptor_proto  # a client can read the contract
    finally:
        server.stop(grace=1)


def test_watch_streams_changes(server, client) -> None:
    seen = []
    ready = threading.Event()

    def watch() -> None:
        with ReconClient(server.address, "watcher") as watcher:
            stream = watcher.watch("s", since=0, dtype="float64")
            ready.set()
            for pulled in stream:
                seen.append((pulled.version, pulled.class_ids))
                if len(seen) == 2:
                    return

    thread = threading.Thread(target=watch)
    thread.start()
    ready.wait(5)
    client.push("s", ["a"], [1], np.zeros((1, 2)))
    client.push("other-space", ["z"], [1], np.zeros((1, 2)))
    client.push("s", ["b"], [1], np.zeros((1, 2)))
    thread.join(10)
    assert not thread.is_alive()
    assert [ids for _, ids in seen] == [["a"], ["b"]] and seen[-1][0] == 3


def test_memory_sync_through_server(server) -> None:
    rng = np.random.default_rng(0)
    memories = [PrototypeMemory(), PrototypeMemory()]
    examples = {}
    for i, memory in enumerate(memories):
        for cls in ("shared", f"own{i}"):
            x = rng.normal(size=(5, 3))
            examples.setdefault(cls, []).append(x)
            memory.add_examples([cls] * 5, x)
    with ReconClient(server.address, "c0", dtype="float64") as c0, \
            ReconClient(server.address, "c1", dtype="float64") as c1:
        replicas = [Replica("c0", "s", memories[0], c0.state), Replica("c1", "s", memories[1], c1.state)]
        replicas[0].sync(c0.merger)
        replicas[1].sync(c1.merger)
        replicas[0].sync(c0.merger)
    for memory in memories:
        table = memory.union()
        assert sorted(memory.class_ids()) == ["own0", "own1", "shared"]
        for cls, xs in examples.items():
            np.testing.assert_allclose(table.means(table.rows([cls], create=False))[0], np.concatenate(xs).mean(0),
                                       atol=1e-9)
    query = np.concatenate(examples["own1"]).mean(0, keepdims=True)
    assert memories[0].classify(query) == ["own1"]


def test_client_resumes_pending_push_after_crash(server, tmp_path: Path) -> None:
    state = tmp_path / "alice.json"
    with ReconClient(server.address, "alice", state_path=state) as first:
        first.push("s", ["a"], [1], np.ones((1, 2)))
        # The process "dies" after recording push 2 as pending and before hearing the answer:
        request = pb.PushRequest(client_id="alice", space="s", seq=2,
                                 deltas=codec.encode_deltas(Deltas(["b"], [4], np.ones((1, 2)))))
        first.state.begin(2, "s", request.SerializeToString())
        first.merger.stub.Push(request, timeout=5)  # the server applied it; the ack was lost
    with ReconClient(server.address, "alice", state_path=state) as second:
        assert second.state.pending.seq == 2
        ack = second.push("s", ["c"], [1], np.ones((1, 2)))
    assert ack.seq == 3
    pulled = ReconClient(server.address).pull("s")
    assert dict(zip(pulled.class_ids, pulled.counts.tolist(), strict=True)) == {"a": 1, "b": 4, "c": 1}


def test_client_retries_until_server_is_up(tmp_path: Path) -> None:
    port = free_port()
    store = PrototypeStore(tmp_path / "late.db")
    result: dict = {}

    def push(retries: int) -> None:
        # each attempt waits 0.2 s at most and the connect check is off, so only retrying can outlast the gap
        with ReconClient(f"127.0.0.1:{port}", "late", timeout=0.2, retries=retries, backoff=0.05,
                         connect_timeout=None) as c:
            try:
                result[retries] = c.push("s", ["a"], [1], np.ones((1, 2)))
            except grpc.RpcError as error:
                result[retries] = error.code()

    impatient = threading.Thread(target=push, args=(0,))
    patient = threading.Thread(target=push, args=(40,))
    impatient.start()
    patient.start()
    threading.Event().wait(1.5)
    impatient.join(5)
    srv = serve(ServerConfig(port=port, insecure=True), store)
    patient.join(30)
    srv.stop(1)
    assert result[0] == grpc.StatusCode.DEADLINE_EXCEEDED  # without retries the same client gives up
    assert result[40].seq == 1
