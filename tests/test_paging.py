"""Paged sync: replies stay under the page budget; a paged pull is consistent while pushes land; watch rules."""

import threading

import grpc
import numpy as np
import pytest

from fedrecon.client.recon_client import ReconClient
from fedrecon.proto import codec
from fedrecon.proto.limits import Limits
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.errors import InvalidRequest
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore


def _table(result_pages) -> dict:
    """class -> (count, mean) from pages in order, later pages overriding earlier ones."""
    out = {}
    for page in result_pages:
        for cid, count, mean in zip(page.class_ids, page.counts.tolist(), page.means, strict=True):
            out[cid] = (count, mean.tolist())
    return out


def _page_through(store: PrototypeStore, since: int, max_bytes: int, between=lambda i: None) -> list:
    pages, token = [], ""
    while True:
        page = store.pull("s", since, page_token=token, max_bytes=max_bytes)
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages
        between(len(pages))


@pytest.mark.parametrize("since_first", [False, True])
def test_paged_pull_is_consistent_while_pushes_and_revocations_land(since_first: bool) -> None:
    rng = np.random.default_rng(1)
    store = PrototypeStore()
    seqs = {"a": 0, "b": 0, "c": 0}

    def push(client: str, ids: list[str]) -> None:
        seqs[client] += 1
        store.push(client, seqs[client], "s", Deltas(ids, rng.integers(1, 9, len(ids)), rng.normal(size=(len(ids), 4))))

    for start in range(0, 600, 100):
        push("a", [f"k{i}" for i in range(start, start + 100)])
    push("b", [f"k{i}" for i in range(590, 650)])  # k600..649 only b has: removed when b is revoked
    since = store.version if since_first else 0
    if since_first:
        push("c", [f"k{i}" for i in range(0, 300, 3)])

    def between(i: int) -> None:  # classes already sent, classes not yet sent, new classes, removals
        push("c", [f"k{j}" for j in rng.choice(700, size=20, replace=False)])
        if i == 3:
            store.revoke("b")

    pages = _page_through(store, since, max_bytes=3000, between=between)
    assert len(pages) > 5 and all(p.next_page_token for p in pages[:-1])
    final = pages[-1].version
    assert final == store.version  # nothing happened after the last page
    truth = _table([store.pull("s", since)])  # one unpaged pull at the final version
    got = _table(pages)
    if not since_first:  # a full pull: removed classes come as count 0 (the client drops them)
        got = {c: v for c, v in got.items() if v[0] > 0}
    assert got == truth


def test_page_tokens_are_checked() -> None:
    store = PrototypeStore()
    store.push("a", 1, "s", Deltas([f"k{i}" for i in range(100)], [1] * 100, np.zeros((100, 4))))
    token = store.pull("s", 0, max_bytes=2000).next_page_token
    assert token
    for bad, since in (("junk", 0), ("p1.1.5.1.999", 0), (token, 1)):
        with pytest.raises(InvalidRequest, match="page_token"):
            store.pull("s", since, page_token=bad, max_bytes=2000)


def test_100k_classes_through_a_plain_stub_with_default_limits() -> None:
    n, dim = 100_000, 64
    rng = np.random.default_rng(0)
    means = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"class-{i:06d}" for i in range(n)]
    server = serve(ServerConfig(insecure=True), PrototypeStore())
    try:
        with grpc.insecure_channel(server.address) as channel:  # default 4 MiB receive limit
            stub = rpc.ReconnaissanceStub(channel)
            half = n // 2
            for seq, part in ((1, slice(0, half)), (2, slice(half, n))):
                stub.Push(pb.PushRequest(client_id="a", space="s", seq=seq, deltas=codec.encode_deltas(
                    Deltas(ids[part], np.arange(n)[part] % 7 + 1, means[part]))), timeout=120)
            replies, token = [], ""
            while True:
                reply = stub.Pull(pb.PullRequest(space="s", page_token=token), timeout=60)
                assert reply.ByteSize() <= 1024 * 1024
                replies.append(reply)
                token = reply.next_page_token
                if not token:
                    break
        assert len(replies) > 5
        got = {}
        for reply in replies:
            deltas = codec.decode_deltas(reply.classes)
            got.update(zip(deltas.class_ids, zip(deltas.counts.tolist(), deltas.means, strict=True), strict=True))
        assert len(got) == n
        order = [got[c] for c in ids]
        assert [c for c, _ in order] == (np.arange(n) % 7 + 1).tolist()
        np.testing.assert_array_equal(np.stack([m for _, m in order]), means)
        with ReconClient(server.address) as client:  # the client library follows the pages itself
            pulled = client.pull("s")
        assert sorted(pulled.class_ids) == ids and pulled.version == 2
    finally:
        server.stop(grace=1)


def test_watch_pages_a_large_pass_and_the_client_yields_it_whole() -> None:
    store = PrototypeStore()
    store.push("a", 1, "s", Deltas([f"k{i}" for i in range(500)], [1] * 500, np.ones((500, 8))))
    server = serve(ServerConfig(insecure=True), store)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stream = rpc.ReconnaissanceStub(channel).Watch(pb.WatchRequest(space="s", max_reply_bytes=4096),
                                                           timeout=30)
            pages = []
            for reply in stream:
                pages.append(reply)
                if not reply.next_page_token:
                    break
            stream.cancel()
        assert len(pages) > 3 and all(r.ByteSize() <= 4096 for r in pages)
        assert sum(len(r.classes.class_ids) for r in pages) == 500
    finally:
        server.stop(grace=1)
    small = serve(ServerConfig(insecure=True), PrototypeStore(limits=Limits(max_reply_bytes=4096)))
    try:
        small.store.push("a", 1, "s", Deltas([f"k{i}" for i in range(500)], [1] * 500, np.ones((500, 8))))
        with ReconClient(small.address, dtype="float64") as client:
            assert len(client.pull("s").class_ids) == 500
            stream = client.watch("s", since=0)
            assert len(next(stream).class_ids) == 500  # the client joins a pass's pages into one result
            small.store.push("a", 2, "s", Deltas(["new"], [2], np.ones((1, 8))))
            later = next(stream)
            assert later.class_ids == ["new"] and later.version == 2
    finally:
        small.stop(grace=1)


def test_watch_with_since_ahead_is_failed_precondition() -> None:
    store = PrototypeStore()
    store.push("a", 1, "s", Deltas(["x"], [1], np.ones((1, 2))))
    server = serve(ServerConfig(insecure=True), store)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            for call in (lambda: stub.Pull(pb.PullRequest(space="s", since=5), timeout=10),
                         lambda: next(iter(stub.Watch(pb.WatchRequest(space="s", since=5), timeout=10)))):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "ahead of this store's version 1" in info.value.details()
    finally:
        server.stop(grace=1)


def test_watch_ends_the_stream_of_a_revoked_or_removed_client(tmp_path) -> None:
    from security_helpers import make_tokens

    from fedrecon.proto.v1 import admin_pb2 as apb
    from fedrecon.proto.v1 import admin_pb2_grpc as arpc
    from fedrecon.server.auth import remove_tokens

    path = tmp_path / "tokens.json"
    tokens = make_tokens(path, clients=("alice", "bob", "carol", "dave"))
    server = serve(ServerConfig(tokens=path), PrototypeStore(None))

    def bearer(name: str) -> tuple:
        return (("authorization", f"Bearer {tokens[name]}"),)

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub, admin = rpc.ReconnaissanceStub(channel), arpc.AdminStub(channel)
            stub.Push(pb.PushRequest(space="s", seq=1, deltas=codec.encode_deltas(Deltas(["b"], [1], np.ones((1, 2))))),
                      metadata=bearer("bob"), timeout=10)
            streams = {name: stub.Watch(pb.WatchRequest(space="s"), metadata=bearer(name), timeout=60)
                       for name in ("bob", "carol", "dave")}
            for stream in streams.values():
                assert list(next(stream).classes.class_ids) == ["b"]  # each stream is open and streaming
            ends: dict[str, grpc.StatusCode] = {}

            def drain(name: str) -> None:
                try:
                    for _ in streams[name]:
                        pass
                except grpc.RpcError as error:
                    ends[name] = error.code()

            readers = [threading.Thread(target=drain, args=(name,)) for name in streams]
            for reader in readers:
                reader.start()
            admin.RevokeClient(apb.RevokeClientRequest(client_id="bob"), metadata=bearer("root"), timeout=10)
            reply = admin.RevokeClient(apb.RevokeClientRequest(client_id="carol", disable_tokens=True),
                                       metadata=bearer("root"), timeout=10)  # carol never pushed
            assert reply.tokens_disabled == 1
            remove_tokens(path, "dave")
            for reader in readers:
                reader.join(60)
            assert ends == {"bob": grpc.StatusCode.PERMISSION_DENIED, "carol": grpc.StatusCode.UNAUTHENTICATED,
                            "dave": grpc.StatusCode.UNAUTHENTICATED}
            with pytest.raises(grpc.RpcError) as info:
                stub.Info(pb.InfoRequest(), metadata=bearer("carol"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # carol's token is disabled
    finally:
        server.stop(grace=1)


class _DropSecondPage(grpc.ServerInterceptor):
    """Answers the first request for a second page UNAVAILABLE (a lost reply), then serves normally."""

    def __init__(self) -> None:
        self.dropped = 0

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201 - gRPC's hook
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.endswith("/Pull"):
            return handler
        inner = handler.unary_unary

        def pull(request, context):  # noqa: ANN001, ANN202
            if request.page_token and not self.dropped:
                self.dropped += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "lost")
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(pull, handler.request_deserializer, handler.response_serializer)


def test_a_page_asked_ahead_and_lost_is_asked_again() -> None:
    """The client asks for the next page while it decodes one; a failed ask is retried the usual way."""

    dropper = _DropSecondPage()
    server = serve(ServerConfig(insecure=True, interceptors=(dropper,)),
                   PrototypeStore(limits=Limits(max_reply_bytes=4096)))
    try:
        ids = [f"c{i:03d}" for i in range(300)]
        server.store.push("a", 1, "s", Deltas(ids, np.arange(300) % 5 + 1, np.ones((300, 8))))
        with ReconClient(server.address, "reader", timeout=5, backoff=0.01) as client:
            pulled = client.pull("s", since=0)
        assert dropper.dropped == 1
        assert sorted(pulled.class_ids) == ids and pulled.counts.sum() == (np.arange(300) % 5 + 1).sum()
    finally:
        server.stop(1)
