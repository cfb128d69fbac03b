"""Bearer-token auth: hashed token file, UNAUTHENTICATED / PERMISSION_DENIED, no impersonation, explicit open mode."""

import json
import os
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import FEDRECON, ServerProcess, start_server
from security_helpers import make_tokens

from fedrecon.client.recon_client import ReconClient
from fedrecon.proto import codec
from fedrecon.proto.channel import ChannelSecurity
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import admin_pb2 as apb
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.auth import TokenFileError, TokenStore, hash_token, read_entries, remove_tokens
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore


@pytest.fixture
def secured(tmp_path: Path):
    path = tmp_path / "tokens.json"
    tokens = make_tokens(path)
    server = serve(ServerConfig(tokens=path), PrototypeStore(None))
    channel = grpc.insecure_channel(server.address)
    yield server, channel, tokens, path
    channel.close()
    server.stop(grace=1)


def _bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def _request(client_id: str = "", seq: int = 1) -> pb.PushRequest:
    return pb.PushRequest(client_id=client_id, space="s", seq=seq,
                          deltas=codec.encode_deltas(Deltas(["a"], [2], np.ones((1, 3)))))


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_token_file_holds_only_hashes(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    tokens = make_tokens(path)
    text = path.read_text()
    assert all(token not in text for token in tokens.values())
    assert {e["sha256"] for e in read_entries(path)} == {hash_token(t) for t in tokens.values()}
    assert os.stat(path).st_mode & 0o077 == 0
    assert TokenStore(path).lookup(tokens["root"]).role == "admin"
    assert TokenStore(path).lookup("frt_guess") is None
    store = TokenStore(path)
    path.write_text("{not json")  # a broken or deleted file admits no one
    assert store.lookup(tokens["alice"]) is None
    path.unlink()
    assert store.lookup(tokens["alice"]) is None


def test_bad_token_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="does not exist"):
        TokenStore(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tokens": [{"sha256": "x", "client_id": "a", "role": "god"}]}))
    with pytest.raises(TokenFileError, match="malformed"):
        TokenStore(bad)


def test_push_identity_comes_from_the_token(secured) -> None:
    server, channel, tokens, _ = secured
    stub = rpc.ReconnaissanceStub(channel)
    reply = stub.Push(_request(""), metadata=_bearer(tokens["alice"]), timeout=5)
    assert reply.seq == 1 and set(server.store.tables.clients) == {"alice"}
    reply = stub.Push(_request("alice", seq=2), metadata=_bearer(tokens["alice"]), timeout=5)
    assert reply.seq == 2


def test_refusals_change_nothing(secured) -> None:
    server, channel, tokens, path = secured
    stub, admin = rpc.ReconnaissanceStub(channel), arpc.AdminStub(channel)
    before = server.store.info()
    push = stub.Push
    assert _code(lambda: push(_request("alice"), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: push(_request("alice"), metadata=_bearer("frt_unknown"), timeout=5)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: push(_request("alice"), metadata=(("authorization", tokens["alice"]),), timeout=5)) == \
        grpc.StatusCode.UNAUTHENTICATED  # no "Bearer " scheme
    # impersonation: bob's token, alice's id
    assert _code(lambda: push(_request("alice"), metadata=_bearer(tokens["bob"]), timeout=5)) == \
        grpc.StatusCode.PERMISSION_DENIED
    # an admin token may not push; a client token may not administer
    assert _code(lambda: push(_request(""), metadata=_bearer(tokens["root"]), timeout=5)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: admin.Stats(apb.StatsRequest(), metadata=_bearer(tokens["alice"]), timeout=5)) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: admin.RevokeClient(apb.RevokeClientRequest(client_id="bob"), timeout=5)) == \
        grpc.StatusCode.UNAUTHENTICATED
    watch = stub.Watch(pb.WatchRequest(space="s"), timeout=5)
    assert _code(lambda: next(watch)) == grpc.StatusCode.UNAUTHENTICATED
    assert server.store.info() == before and server.store.tables.clients == {}
    # a removed token stops working at once (the file is reloaded)
    assert stub.Pull(pb.PullRequest(space="s"), metadata=_bearer(tokens["bob"]), timeout=5).version == 0
    assert remove_tokens(path, "bob") == 1
    assert _code(lambda: stub.Pull(pb.PullRequest(space="s"), metadata=_bearer(tokens["bob"]), timeout=5)) == \
        grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token(secured) -> None:
    _, channel, _, _ = secured
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_client_library_sends_its_token(secured) -> None:
    server, _, tokens, _ = secured
    with ReconClient(server.address, "alice", security=ChannelSecurity(token=tokens["alice"]), timeout=5) as c:
        ack = c.push("s", ["a", "b"], [1, 2], np.zeros((2, 3)))
        assert ack.classes == 2 and c.pull("s").class_ids == ["a", "b"]
    with ReconClient(server.address, "bob", security=ChannelSecurity(token=tokens["alice"]), timeout=5) as c:
        assert _code(lambda: c.push("s", ["a"], [1], np.zeros((1, 3)))) == grpc.StatusCode.PERMISSION_DENIED


def test_a_server_needs_tokens_or_insecure() -> None:
    with pytest.raises(ValueError, match="--insecure"):
        ServerConfig()


def test_cli_server_requires_a_mode_and_warns_when_insecure(tmp_path: Path) -> None:
    out = subprocess.run([*FEDRECON, "server", "--port", "0", "--memory"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "--insecure" in out.stderr
    server = ServerProcess(tmp_path / "s.db", log_level="info").start()
    assert server.stop() == 0
    assert "INSECURE MODE" in server.log_tail(100_000)


def test_cli_tokens_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    made = subprocess.run([*FEDRECON, "admin", "token", "add", "--tokens", str(path), "--client-id", "carol"],
                          capture_output=True, text=True, timeout=60, check=True)
    token = json.loads(made.stdout)["token"]
    assert token not in path.read_text()
    process, address = start_server(tmp_path / "s.db", "--tokens", str(path), insecure=False)
    try:
        np.savez(tmp_path / "d.npz", class_ids=np.array(["x"]), counts=np.array([3]), means=np.ones((1, 2)))
        base = [*FEDRECON, "client", "push", "--server", address, "--client-id", "carol", "--space", "s",
                "--npz", str(tmp_path / "d.npz"), "--state", str(tmp_path / "carol.json")]
        refused = subprocess.run(base, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr
        ok = subprocess.run([*base, "--token", token], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["seq"] == 1  # the refused push was not kept as pending
    finally:
        process.terminate()
        process.communicate(timeout=30)
