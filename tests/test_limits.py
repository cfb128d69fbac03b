"""Limits: message size, classes per push, class id length, pushes per second per client, concurrent streams."""

import threading

import grpc
import numpy as np
import pytest

from fedrecon.proto import codec
from fedrecon.proto.limits import Limits
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.ratelimit import RateLimits, StreamSlots, TokenBuckets
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore


def _push(stub, client: str, seq: int, n: int = 1, dim: int = 2, class_len: int = 1) -> grpc.StatusCode:
    ids = [f"{i:0{class_len}d}" for i in range(n)]
    request = pb.PushRequest(client_id=client, space="s", seq=seq,
                             deltas=codec.encode_deltas(Deltas(ids, [1] * n, np.zeros((n, dim)))))
    try:
        stub.Push(request, timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


@pytest.fixture
def limited():
    store = PrototypeStore(None, limits=Limits(max_classes_per_push=10, max_message_bytes=4096, max_class_id_bytes=8))
    rate_limits = RateLimits(pushes_per_second=0.2, push_burst=2, max_streams_per_client=1)
    server = serve(ServerConfig(insecure=True, rate_limits=rate_limits), store)
    channel = grpc.insecure_channel(server.address)
    yield store, rpc.ReconnaissanceStub(channel)
    channel.close()
    server.stop(grace=0.5)


def test_size_and_shape_limits(limited) -> None:
    store, stub = limited
    assert _push(stub, "a", 1, n=11) == grpc.StatusCode.INVALID_ARGUMENT
    assert _push(stub, "b", 1, class_len=9) == grpc.StatusCode.INVALID_ARGUMENT
    assert _push(stub, "c", 1, n=1, dim=2000) == grpc.StatusCode.RESOURCE_EXHAUSTED  # > 4096 bytes
    assert store.version == 0


def test_push_rate_per_client(limited) -> None:
    store, stub = limited
    assert [_push(stub, "a", s) for s in (1, 2)] == [grpc.StatusCode.OK] * 2  # the burst
    assert _push(stub, "a", 3) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _push(stub, "b", 1) == grpc.StatusCode.OK  # another client has its own budget
    assert store.client_record("a").last_seq == 2 and store.version == 3


def _refusal(call) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_transient_refusals_carry_retry_after_and_size_refusals_do_not(limited) -> None:
    store, stub = limited
    big = pb.PushRequest(client_id="c", space="s", seq=1, deltas=codec.encode_deltas(
        Deltas(["0"], [1], np.zeros((1, 2000)))))
    too_big = _refusal(lambda: stub.Push(big, timeout=5))
    assert too_big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fedrecon-retry-after-ms" not in dict(too_big.trailing_metadata() or ())  # permanent: never retry it
    assert [_push(stub, "a", s) for s in (1, 2)] == [grpc.StatusCode.OK] * 2
    small = pb.PushRequest(client_id="a", space="s", seq=3, deltas=codec.encode_deltas(
        Deltas(["0"], [1], np.zeros((1, 2)))))
    limited_rate = _refusal(lambda: stub.Push(small, timeout=5))
    assert limited_rate.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(limited_rate.trailing_metadata())["fedrecon-retry-after-ms"]) > 0  # transient: retry later


def test_concurrent_streams_per_client(limited) -> None:
    store, stub = limited
    first = stub.Watch(pb.WatchRequest(space="s"), timeout=10)
    got = threading.Event()

    def read() -> None:
        try:
            for _ in first:
                got.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert _push(stub, "a", 1) == grpc.StatusCode.OK
        assert got.wait(5)  # the first stream is open and streaming
        with pytest.raises(grpc.RpcError) as info:
            for _ in stub.Watch(pb.WatchRequest(space="s"), timeout=10):
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fedrecon-retry-after-ms" in dict(info.value.trailing_metadata())
    finally:
        first.cancel()
        reader.join(5)


def test_token_bucket_refills_with_time() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=4, burst=2, clock=lambda: now[0])
    assert [buckets.take("x") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("x") == pytest.approx(0.25)
    now[0] += 0.25
    assert buckets.take("x") == 0.0
    assert buckets.take("y") == 0.0
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)


def test_stream_slots() -> None:
    slots = StreamSlots(2)
    assert slots.acquire("k") and slots.acquire("k") and not slots.acquire("k")
    slots.release("k")
    assert slots.acquire("k")


def test_totals_never_overflow_info_or_stats() -> None:
    """128 valid pushes of 65,536 classes with count 2**40: the space stops at its bound; Info and Stats answer."""
    from fedrecon.proto.limits import MAX_SPACE_EXAMPLES
    from fedrecon.proto.v1 import admin_pb2 as apb
    from fedrecon.proto.v1 import admin_pb2_grpc as arpc

    n = 65_536
    server = serve(ServerConfig(insecure=True), PrototypeStore(None))
    deltas = codec.encode_deltas(Deltas([f"c{i}" for i in range(n)], [2**40] * n, np.zeros((n, 1))))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            codes = []
            for seq in range(1, 129):
                try:
                    stub.Push(pb.PushRequest(client_id=f"c{seq}", space="s", seq=1, deltas=deltas), timeout=60)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
                    assert "examples" in error.details()
            accepted = MAX_SPACE_EXAMPLES // (n * 2**40)
            assert codes == [grpc.StatusCode.OK] * accepted + [grpc.StatusCode.INVALID_ARGUMENT] * (128 - accepted)
            info = stub.Info(pb.InfoRequest(), timeout=10)
            assert info.spaces[0].examples == info.limits.max_space_examples == MAX_SPACE_EXAMPLES
            stats = arpc.AdminStub(channel).Stats(apb.StatsRequest(), timeout=10)
            assert stats.spaces[0].examples == MAX_SPACE_EXAMPLES
            assert sum(c.examples for c in stats.clients) == MAX_SPACE_EXAMPLES
    finally:
        server.stop(grace=1)


def test_info_and_stats_answer_on_a_database_whose_totals_overflowed_before_the_bound(tmp_path) -> None:
    """A database written by an older server, with a space total past 2**63: Info and Stats still answer."""
    import sqlite3

    from fedrecon.proto.v1 import admin_pb2 as apb
    from fedrecon.proto.v1 import admin_pb2_grpc as arpc

    db = tmp_path / "old.db"
    with PrototypeStore(db, checkpoint_every=1) as store:
        store.push("a", 1, "s", Deltas([f"c{i}" for i in range(4)], [1] * 4, np.zeros((4, 1))))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE classes SET count = ?, crc = -1", (2**62,))  # an older server: no checksums
        conn.execute("UPDATE contributions SET count = ?, crc = -1", (2**62,))
    server = serve(ServerConfig(insecure=True), PrototypeStore(db))
    try:
        with grpc.insecure_channel(server.address) as channel:
            info = rpc.ReconnaissanceStub(channel).Info(pb.InfoRequest(), timeout=10)
            stats = arpc.AdminStub(channel).Stats(apb.StatsRequest(), timeout=10)
        assert info.spaces[0].examples == stats.spaces[0].examples == 2**62  # clamped, never out of range
        assert stats.clients[0].examples == 2**64 - 1
    finally:
        server.stop(grace=1)


def test_a_served_store_keeps_its_own_limits() -> None:
    """The store owns its limits: serving it never swaps them for defaults, and a config that names others is
    refused rather than silently applied."""
    limits = Limits(max_classes_per_push=3, max_class_id_bytes=16, max_dim=4, max_reply_bytes=2048)
    store = PrototypeStore(None, limits=limits)
    with pytest.raises(ValueError, match="owns its limits"):
        serve(ServerConfig(insecure=True, limits=Limits()), store)
    server = serve(ServerConfig(insecure=True, limits=limits), store)  # the same limits: no conflict
    try:
        assert server.store.limits is limits and server.service.limits is limits
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            info = stub.Info(pb.InfoRequest(), timeout=10)
            assert (info.limits.max_classes_per_push, info.limits.max_class_id_bytes, info.limits.max_dim,
                    info.limits.max_reply_bytes) == (3, 16, 4, 2048)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Push(pb.PushRequest(client_id="a", space="s", seq=1, deltas=codec.encode_deltas(
                    Deltas(["a", "b", "c", "d"], [1] * 4, np.zeros((4, 2))))), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(grace=1)


def test_a_server_opened_from_its_config_gets_the_config_limits(tmp_path) -> None:
    """Without a store handed in, `serve` opens the one `db` names with the config's limits (as the CLI does)."""
    limits = Limits(max_classes_per_push=7)
    server = serve(ServerConfig(insecure=True, db=tmp_path / "s.db", limits=limits))
    try:
        assert server.store.limits is limits and server.store.path == tmp_path / "s.db"
    finally:
        server.stop(grace=1)
