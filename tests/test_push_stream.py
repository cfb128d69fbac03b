"""PushStream: many numbered pushes on one call, each answered in order once durable, exactly once; the first
refusal ends the call and nothing sent after it is merged; rate limits, roles and metrics apply per push."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from security_helpers import make_tokens

from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.trailers import RETRY_AFTER_MS
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.errors import EarlierPushRefused, SeqReused
from fedrecon.server.ratelimit import RateLimits
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore

DIM = 4


def _request(seq: int, client_id: str = "alice", good: bool = True) -> pb.PushRequest:
    means = np.full((2, DIM), float(seq), dtype=np.float32)
    deltas = codec.encode_deltas(Deltas([f"c{seq % 3}", "shared"], [seq, 1], means))
    if not good:  # a NaN, packed by hand (the encoder refuses one)
        means[0, 0] = np.nan
        deltas.means.data = means.tobytes()
    return pb.PushRequest(client_id=client_id, space="s", seq=seq, deltas=deltas)


def _answers(messages: Iterator[pb.PushStreamReply]) -> Iterator[pb.PushReply]:
    """The answers of a PushStream call, one per push, in order (several may come in one message)."""
    for message in messages:
        yield from message.replies


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PrototypeStore, rpc.ReconnaissanceStub]]:
    store = PrototypeStore(tmp_path / "s.db")
    server = serve(ServerConfig(insecure=True), store)
    channel = grpc.insecure_channel(server.address)
    yield store, rpc.ReconnaissanceStub(channel)
    channel.close()
    server.stop(grace=1)


def test_pushes_on_one_stream_are_answered_in_order_and_merged_once(served) -> None:
    store, stub = served
    replies = list(_answers(stub.PushStream(iter([_request(seq) for seq in range(1, 41)]), timeout=30)))
    assert [r.seq for r in replies] == list(range(1, 41))
    assert not any(r.duplicate for r in replies)
    assert [r.version for r in replies] == sorted(r.version for r in replies) and replies[-1].version == 40
    assert store.client_record("alice").last_seq == 40
    snapshot = store.pull("s")
    shared = snapshot.class_ids.index("shared")
    assert snapshot.counts[shared] == 40  # every push counted exactly once
    assert snapshot.counts.sum() == 40 + sum(range(1, 41))
    # a retry of the last push on a new stream gets the stored answer; nothing is merged again
    (again,) = _answers(stub.PushStream(iter([_request(40)]), timeout=10))
    assert again.duplicate and again.seq == 40 and store.pull("s").counts.sum() == snapshot.counts.sum()


def test_answers_that_are_ready_together_share_one_message(tmp_path: Path) -> None:
    """A backlog costs a send per commit, not one per push: the pushes that queued up while the writer was
    busy are answered together once their commit is done, still one answer per push and in order."""
    store = PrototypeStore(tmp_path / "s.db")
    server = serve(ServerConfig(insecure=True), store)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            with store.tables.lock:  # the writer commits its first batch but cannot apply (nor answer) it yet
                call = stub.PushStream(iter([_request(seq) for seq in range(1, 41)]), timeout=30)
                deadline = time.monotonic() + 20
                while len(store._queue) + store.committed_operations < 40 and time.monotonic() < deadline:
                    time.sleep(0.01)
            messages = list(call)
        assert [r.seq for m in messages for r in m.replies] == list(range(1, 41))
        assert len(messages) < 10
        assert store.client_record("alice").last_seq == 40
    finally:
        server.stop(grace=1)


def test_a_refused_push_ends_the_stream_and_nothing_sent_after_it_is_merged(served) -> None:
    store, stub = served
    requests = [_request(seq, good=seq != 5) for seq in range(1, 11)]  # all sent at once: 6..10 are in flight
    answered = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in _answers(stub.PushStream(iter(requests), timeout=30)):
            answered.append(reply.seq)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in info.value.details()
    assert answered == [1, 2, 3, 4]
    assert store.client_record("alice").last_seq == 4
    assert store.pull("s").counts.sum() == 4 + sum(range(1, 5))
    # the client may number the rest again from the refused one: push 5 (good now) and 6 go through
    replies = list(_answers(stub.PushStream(iter([_request(5), _request(6)]), timeout=10)))
    assert [r.seq for r in replies] == [5, 6] and store.client_record("alice").last_seq == 6


def test_pushes_after_a_reused_number_are_not_merged_even_though_their_numbers_follow(served) -> None:
    """Push 1 exists with other content, so 2 and 3 would be valid next numbers: they still follow a refusal."""
    store, stub = served
    stub.Push(_request(1), timeout=10)
    other = _request(1)
    other.deltas.counts[0] = 99
    with pytest.raises(grpc.RpcError) as info:
        list(_answers(stub.PushStream(iter([other, _request(2), _request(3)]), timeout=10)))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert store.client_record("alice").last_seq == 1 and store.pull("s").counts.sum() == 2


def test_the_store_refuses_a_push_queued_after_a_refused_one(tmp_path: Path) -> None:
    """What makes the rule hold whatever the timing: a push conditional on a refused one is never merged."""
    store = PrototypeStore(tmp_path / "s.db")
    try:
        store.push("alice", 1, "s", Deltas(["a"], np.array([1]), np.ones((1, DIM))))
        reused = store.submit_push("alice", 1, "s", Deltas(["a"], np.array([2]), np.ones((1, DIM))))  # other content
        follower = store.submit_push("alice", 2, "s", Deltas(["b"], np.array([1]), np.ones((1, DIM))), after=reused)
        with pytest.raises(SeqReused):
            reused.wait(10)
        with pytest.raises(EarlierPushRefused):
            follower.wait(10)
        assert store.client_record("alice").last_seq == 1 and "b" not in store.pull("s").class_ids
    finally:
        store.close()


def test_a_gap_in_a_stream_is_refused_with_the_expected_number(served) -> None:
    store, stub = served
    with pytest.raises(grpc.RpcError) as info:
        list(_answers(stub.PushStream(iter([_request(1), _request(3), _request(4)]), timeout=10)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(info.value.trailing_metadata())["fedrecon-expected-seq"] == "2"
    assert store.client_record("alice").last_seq == 1


def test_a_client_that_keeps_a_window_is_answered_while_it_sends(served) -> None:
    """Replies come while the call is open: a client that waits for an answer before sending more never hangs."""
    store, stub = served
    slots = threading.Semaphore(2)

    def outgoing() -> Iterator[pb.PushRequest]:
        for seq in range(1, 31):
            assert slots.acquire(timeout=10), "no reply came back while the stream was open"
            yield _request(seq)

    seqs = []
    for reply in _answers(stub.PushStream(outgoing(), timeout=30)):
        seqs.append(reply.seq)
        slots.release()
    assert seqs == list(range(1, 31)) and store.client_record("alice").last_seq == 30


def test_stream_pushes_are_rate_limited_one_token_each(tmp_path: Path) -> None:
    store = PrototypeStore(tmp_path / "s.db")
    server = serve(ServerConfig(insecure=True, rate_limits=RateLimits(pushes_per_second=0.5, push_burst=3)), store)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            answered = []
            with pytest.raises(grpc.RpcError) as info:
                for reply in _answers(stub.PushStream(iter([_request(seq) for seq in range(1, 9)]), timeout=10)):
                    answered.append(reply.seq)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert RETRY_AFTER_MS in dict(info.value.trailing_metadata())  # transient: retry after that long
        assert answered == [1, 2, 3] and store.client_record("alice").last_seq == 3
    finally:
        server.stop(grace=1)


def test_stream_pushes_need_a_client_token_of_their_own(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens.json")
    store = PrototypeStore(tmp_path / "s.db")
    server = serve(ServerConfig(tokens=tmp_path / "tokens.json"), store)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            alice = (("authorization", f"Bearer {tokens['alice']}"),)
            root = (("authorization", f"Bearer {tokens['root']}"),)
            answers = _answers(stub.PushStream(iter([_request(1), _request(2)]), metadata=alice))
            assert [r.seq for r in answers] == [1, 2]
            with pytest.raises(grpc.RpcError) as info:  # bob's pushes on alice's token
                list(_answers(stub.PushStream(iter([_request(1, client_id="bob")]), metadata=alice, timeout=10)))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as info:  # an admin token may not push
                list(_answers(stub.PushStream(iter([_request(3)]), metadata=root, timeout=10)))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as info:
                list(_answers(stub.PushStream(iter([_request(3)]), timeout=10)))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert store.client_record("alice").last_seq == 2 and "bob" not in store.client_ids()
    finally:
        server.stop(grace=1)


def test_metrics_count_each_push_of_a_stream(tmp_path: Path) -> None:
    store = PrototypeStore(tmp_path / "s.db")
    server = serve(ServerConfig(insecure=True, metrics_port=0), store)
    metrics = server.metrics
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            list(_answers(stub.PushStream(iter([_request(s) for s in range(1, 6)]), timeout=10)))
        assert metrics.pushes._value.get() == 5 and metrics.classes._value.get() == 10
        assert metrics.calls.labels("PushStream", "OK")._value.get() == 1
    finally:
        server.stop(grace=1)
