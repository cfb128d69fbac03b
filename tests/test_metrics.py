"""Prometheus metrics of a real `fedrecon server` process, scraped over HTTP while pushes arrive."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from helpers import free_port, start_server, wait_until

from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc


def scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value from the server's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def push(stub: rpc.ReconnaissanceStub, client: str, seq: int, classes: list[str]) -> pb.PushReply:
    """One push of `classes` (4 examples each, 8-d) as `client` with sequence number `seq`."""
    means = np.random.default_rng(seq).normal(size=(len(classes), 8))
    request = pb.PushRequest(client_id=client, space="space-m", seq=seq,
                             deltas=codec.encode_deltas(Deltas(classes, [4] * len(classes), means), "float32"))
    return stub.Push(request, timeout=10)


def test_metrics_move_as_pushes_arrive(tmp_path: Path) -> None:
    port = free_port()
    server, address = start_server(tmp_path / "m.db", "--metrics-port", str(port))
    try:
        before = scrape(port)
        assert before["fedrecon_store_version"] == 0 and before["fedrecon_store_spaces"] == 0
        assert before["fedrecon_pushes_merged_total"] == 0
        with grpc.insecure_channel(address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            push(stub, "alice", 1, ["a", "b", "c"])
            push(stub, "bob", 1, ["c", "d"])
            push(stub, "bob", 1, ["c", "d"])  # a retry: answered again, merged once
            try:
                push(stub, "bob", 5, ["e"])  # a gap: refused
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            stub.Pull(pb.PullRequest(space="space-m", since=0), timeout=10)
            watch = stub.Watch(pb.WatchRequest(space="space-m", since=0))
            next(watch)  # the stream is open on the server now
            assert wait_until(lambda: scrape(port).get("fedrecon_watch_streams_open") == 1)
            after = scrape(port)
            watch.cancel()
            assert wait_until(lambda: scrape(port).get("fedrecon_watch_streams_open") == 0)
        assert after["fedrecon_pushes_merged_total"] == 2 and after["fedrecon_push_retries_total"] == 1
        assert after["fedrecon_classes_merged_total"] == 5
        assert after['fedrecon_rpc_refusals_total{code="FAILED_PRECONDITION",method="Push"}'] == 1
        assert after['fedrecon_rpc_calls_total{code="OK",method="Push"}'] == 3
        assert after['fedrecon_rpc_latency_seconds_count{method="Push"}'] == 4
        assert after['fedrecon_rpc_latency_seconds_count{method="Pull"}'] == 1
        assert after["fedrecon_store_version"] == 2 and after["fedrecon_store_clients"] == 2
        assert after["fedrecon_store_spaces"] == 1
        assert after['fedrecon_store_classes{space="space-m"}'] == 4
        assert after['fedrecon_store_examples{space="space-m"}'] == 20
        assert after["fedrecon_store_committed_operations_total"] == 2
        assert 1 <= after["fedrecon_store_group_commits_total"] <= 2
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def test_authentication_refusals_are_counted(tmp_path: Path) -> None:
    """The metrics interceptor runs before authentication, so a push without a token is counted as refused."""
    from fedrecon.server.auth import add_token
    from fedrecon.server.serve import ServerConfig, serve
    from fedrecon.server.store import PrototypeStore

    tokens = tmp_path / "tokens.json"
    token = add_token(tokens, "alice")
    server = serve(ServerConfig(tokens=tokens, metrics_port=0), PrototypeStore())
    port = server.metrics_port
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            try:
                push(stub, "alice", 1, ["a"])
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            means = np.zeros((1, 8))
            request = pb.PushRequest(client_id="alice", space="space-m", seq=1,
                                     deltas=codec.encode_deltas(Deltas(["a"], [1], means), "float32"))
            stub.Push(request, timeout=10, metadata=(("authorization", f"Bearer {token}"),))
        values = scrape(port)
        assert values['fedrecon_rpc_refusals_total{code="UNAUTHENTICATED",method="Push"}'] == 1
        assert values["fedrecon_pushes_merged_total"] == 1
    finally:
        server.stop(1.0)
