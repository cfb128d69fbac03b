"""The Admin service and `fedrecon admin`: revoke (audited, versions advance, tokens disabled), stats, export."""

import json
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import FEDRECON, start_server
from security_helpers import make_tokens

from fedrecon.client.recon_client import ReconClient
from fedrecon.proto import codec
from fedrecon.proto.channel import ChannelSecurity
from fedrecon.proto.v1 import admin_pb2 as apb
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.server.serve import ServerConfig, serve
from fedrecon.server.store import PrototypeStore


@pytest.fixture
def secured(tmp_path: Path, db_target):
    """A server with tokens on a durable store of each backend (SQLite, PostgreSQL)."""
    path = tmp_path / "tokens.json"
    tokens = make_tokens(path)
    server = serve(ServerConfig(tokens=path), PrototypeStore(db_target))
    channel = grpc.insecure_channel(server.address)
    yield server, arpc.AdminStub(channel), tokens
    channel.close()
    server.stop(grace=1)


def _client(server, tokens, name: str) -> ReconClient:
    return ReconClient(server.address, name, security=ChannelSecurity(token=tokens[name]), timeout=5)


def _root(tokens) -> tuple:
    return (("authorization", f"Bearer {tokens['root']}"),)


def test_revoke_is_audited_and_visible_to_pulls(secured) -> None:
    server, admin, tokens = secured
    with _client(server, tokens, "alice") as alice, _client(server, tokens, "bob") as bob:
        alice.push("s", ["a", "b"], [2, 2], np.array([[1.0, 1.0], [5.0, 5.0]]), dtype="float64")
        bob.push("s", ["a"], [2], np.array([[3.0, 3.0]]), dtype="float64")
        assert np.allclose(alice.pull("s", dtype="float64").means[0], [2.0, 2.0])
        version = alice.versions["s"]
        reply = admin.RevokeClient(apb.RevokeClientRequest(client_id="alice", disable_tokens=True),
                                   metadata=_root(tokens), timeout=5)
        assert reply.version == version + 1 and reply.classes == 2 and reply.actor == "root"
        assert reply.tokens_disabled == 1
        changed = bob.pull("s", since=version, dtype="float64")
        assert dict(zip(changed.class_ids, changed.counts.tolist(), strict=True)) == {"a": 2, "b": 0}
        assert np.allclose(changed.means[changed.class_ids.index("a")], [3.0, 3.0])
        with pytest.raises(grpc.RpcError) as info:
            alice.pull("s")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stats = admin.Stats(apb.StatsRequest(), metadata=_root(tokens), timeout=5)
    assert [(a.kind, a.client_id, a.actor) for a in stats.audit] == [("revoke", "alice", "root")]
    assert {c.client_id: (c.classes, c.examples) for c in stats.clients} == {"alice": (0, 0), "bob": (1, 2)}
    assert stats.spaces[0].classes == 1 and stats.version == reply.version
    with pytest.raises(grpc.RpcError) as info:
        admin.RevokeClient(apb.RevokeClientRequest(client_id="nobody"), metadata=_root(tokens), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_export_merged_and_per_client(secured) -> None:
    server, admin, tokens = secured
    with _client(server, tokens, "alice") as alice, _client(server, tokens, "bob") as bob:
        alice.push("s", ["a"], [1], np.array([[1.0]]), dtype="float64")
        bob.push("s", ["a", "z"], [3, 1], np.array([[5.0], [7.0]]), dtype="float64")
    merged = admin.Export(apb.ExportRequest(space="s"), metadata=_root(tokens), timeout=5)
    deltas = codec.decode_deltas(merged.tables[0].classes)
    assert deltas.class_ids == ["a", "z"] and deltas.counts.tolist() == [4, 1] and deltas.means[0, 0] == 4.0
    per = admin.Export(apb.ExportRequest(space="s", per_client=True), metadata=_root(tokens), timeout=5)
    assert {t.client_id: codec.decode_deltas(t.classes).class_ids for t in per.tables} == \
        {"alice": ["a"], "bob": ["a", "z"]}
    with pytest.raises(grpc.RpcError) as info:
        admin.Export(apb.ExportRequest(space=""), metadata=_root(tokens), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("per_client", [False, True])
def test_an_export_in_a_dtype_too_narrow_for_its_means_is_refused_in_one_line(secured, per_client: bool) -> None:
    """Found by `benchmarks.fuzz`: a float16 export of means beyond float16's range was an unhandled error."""
    server, admin, tokens = secured
    with _client(server, tokens, "alice") as alice:
        alice.push("s", ["big"], [1], np.array([[1e6, 2.0]]), dtype="float64")
    with pytest.raises(grpc.RpcError) as info:
        admin.Export(apb.ExportRequest(space="s", dtype=pb.FLOAT16,
                                       per_client=per_client), metadata=_root(tokens), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "export of space 's'" in info.value.details() and "float16" in info.value.details()
    wide = admin.Export(apb.ExportRequest(space="s", per_client=per_client), metadata=_root(tokens), timeout=5)
    assert codec.decode_deltas(wide.tables[0].classes).means[0, 0] == 1e6


def test_admin_cli(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokens = make_tokens(path)
    process, address = start_server(tmp_path / "s.db", "--tokens", str(path), insecure=False)
    try:
        with ReconClient(address, "bob", security=ChannelSecurity(token=tokens["bob"]), timeout=5) as bob:
            bob.push("s", ["a", "b"], [1, 2], np.ones((2, 3)))
        base = ["--server", address, "--token", tokens["root"]]

        def admin(*argv: str) -> dict:
            out = subprocess.run([*FEDRECON, "admin", *argv], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        stats = admin("stats", *base)
        assert stats["clients"] == [{"client_id": "bob", "last_seq": 1, "classes": 2, "examples": 3}]
        exported = admin("export", *base, "--space", "s", "--out", str(tmp_path / "e.npz"))
        with np.load(tmp_path / "e.npz") as data:
            assert data["class_ids"].tolist() == ["a", "b"] and exported["version"] == 1
        revoked = admin("revoke", *base, "--client-id", "bob")
        assert revoked["version"] == 2 and revoked["actor"] == "root"
        assert admin("stats", *base)["audit"][0]["actor"] == "root"
        denied = subprocess.run([*FEDRECON, "admin", "stats", "--server", address, "--token", tokens["bob"]],
                                capture_output=True, text=True, timeout=60)
        assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr
        listed = subprocess.run([*FEDRECON, "admin", "token", "list", "--tokens", str(path)], capture_output=True,
                                text=True, timeout=60, check=True)
        assert {e["client_id"] for e in json.loads(listed.stdout)} == {"alice", "bob", "root"}
    finally:
        process.terminate()
        process.communicate(timeout=30)
