"""TLS and mutual TLS with certificates generated in the test: the right certificates work, anything else is refused."""

from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import start_server
from security_helpers import make_ca, make_leaf, make_tokens

from fedrecon.client.grpc_merger import ServerUnreachable
from fedrecon.client.recon_client import ReconClient
from fedrecon.proto.channel import ChannelSecurity
from fedrecon.server.serve import ServerConfig, TlsConfig, serve
from fedrecon.server.store import PrototypeStore


@pytest.fixture(scope="module")
def pki():
    ca, ca_key, ca_cert = make_ca()
    other, other_key, other_cert = make_ca("someone else's CA")
    return {
        "ca": ca,
        "server": make_leaf(ca_key, ca_cert, "localhost", server=True),
        "client": make_leaf(ca_key, ca_cert, "alice", server=False),
        "stranger": make_leaf(other_key, other_cert, "mallory", server=False),
        "other_ca": other,
    }


def _server(pki, mutual: bool, tokens: Path | None = None):
    tls = TlsConfig(pki["server"].cert, pki["server"].key, pki["ca"].cert if mutual else None)
    return serve(ServerConfig(tokens=tokens, insecure=tokens is None, tls=tls), PrototypeStore(None))


def _push(address: str, security: ChannelSecurity | None, client_id: str = "alice") -> int:
    with ReconClient(address, client_id, security=security, timeout=2, retries=0, connect_timeout=2) as c:
        return c.push("s", ["a"], [1], np.ones((1, 2))).seq


REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}  # the handshake never completes


def _refused(address: str, security: ChannelSecurity | None) -> grpc.StatusCode:
    with pytest.raises((grpc.RpcError, ServerUnreachable)) as info:
        _push(address, security)
    if isinstance(info.value, ServerUnreachable):  # the channel never became ready: no handshake succeeded
        return grpc.StatusCode.UNAVAILABLE
    code = info.value.code()
    return grpc.StatusCode.UNAVAILABLE if code in REFUSED else code


def test_tls_server(pki) -> None:
    server = _server(pki, mutual=False)
    try:
        assert _push(server.address, ChannelSecurity(root_certificates=pki["ca"].cert)) == 1
        # plaintext client against the TLS server
        assert _refused(server.address, None) == grpc.StatusCode.UNAVAILABLE
        # a client that trusts another CA does not accept this server
        assert _refused(server.address, ChannelSecurity(root_certificates=pki["other_ca"].cert)) == \
            grpc.StatusCode.UNAVAILABLE
        assert server.store.version == 1
    finally:
        server.stop(grace=1)


def test_mutual_tls(pki) -> None:
    server = _server(pki, mutual=True)
    try:
        good = ChannelSecurity(root_certificates=pki["ca"].cert, client_cert=pki["client"].cert,
                               client_key=pki["client"].key)
        assert _push(server.address, good) == 1
        assert _refused(server.address, ChannelSecurity(root_certificates=pki["ca"].cert)) == \
            grpc.StatusCode.UNAVAILABLE  # no client certificate
        stranger = ChannelSecurity(root_certificates=pki["ca"].cert, client_cert=pki["stranger"].cert,
                                   client_key=pki["stranger"].key)
        assert _refused(server.address, stranger) == grpc.StatusCode.UNAVAILABLE
        assert _refused(server.address, None) == grpc.StatusCode.UNAVAILABLE
        assert server.store.version == 1
    finally:
        server.stop(grace=1)


def test_tls_with_tokens(pki, tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens.json")
    server = _server(pki, mutual=True, tokens=tmp_path / "tokens.json")
    try:
        base = dict(root_certificates=pki["ca"].cert, client_cert=pki["client"].cert, client_key=pki["client"].key)
        assert _refused(server.address, ChannelSecurity(**base)) == grpc.StatusCode.UNAUTHENTICATED
        assert _push(server.address, ChannelSecurity(**base, token=tokens["alice"])) == 1
    finally:
        server.stop(grace=1)


def test_cli_server_with_tls(pki, tmp_path: Path) -> None:
    for name in ("server", "ca"):
        (tmp_path / f"{name}.crt").write_bytes(pki[name].cert)
    (tmp_path / "server.key").write_bytes(pki["server"].key)
    process, address = start_server(tmp_path / "s.db", "--tls-cert", str(tmp_path / "server.crt"), "--tls-key",
                                    str(tmp_path / "server.key"))
    try:
        assert _push(address, ChannelSecurity(root_certificates=pki["ca"].cert, server_name="localhost")) == 1
        assert _refused(address, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        process.terminate()
        process.communicate(timeout=30)
