"""Client-side channel settings shared by every caller of the server (client library, client and admin CLIs).

Lives in `fedrecon.proto` so the server's admin CLI can open a channel without importing the client
package (data flows client -> proto -> server, never server -> client).
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS and token settings for the channel (all optional)."""

    root_certificates: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    token: str | None = None
    server_name: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The `authorization: Bearer` metadata every call carries when a token is set."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _resolve(part: str) -> list[tuple[int, str]]:
    """(family, "ip:port") of every address one "host:port" resolves to (ValueError naming it if none)."""
    host, sep, port = part.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"server address {part!r} is not host:port")
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"server address {part!r} does not resolve ({error})") from None
    out = []
    for family, *_, sockaddr in found:
        text = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
        if (family, text) not in out:
            out.append((family, text))
    return out


def channel_target(address: str) -> str:
    """The gRPC target of a server address: one "host:port" (or any gRPC target, e.g. `dns:///name:port`) as it
    is; several comma-separated ones as one `ipv4:` (or `ipv6:`) list of what they resolve to now."""
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if len(parts) <= 1:
        return address.strip()
    resolved = [r for part in parts for r in _resolve(part)]
    v4 = [text for family, text in resolved if family == socket.AF_INET]
    v6 = [text for family, text in resolved if family == socket.AF_INET6]
    return f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"


def open_channel(address: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    """An insecure channel, or a TLS channel (optionally mutual); the token travels as per-call metadata.

    `address` may name several servers (replicas on one database): "h1:p1,h2:p2", or a DNS name with several
    records. Calls are balanced over every one that answers (gRPC's round_robin), so when one dies, the next
    calls (and the client's retries, with the same push numbers) go to the others."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
               ("grpc.lb_policy_name", "round_robin")]
    security = security or ChannelSecurity()
    target = channel_target(address)
    if target != address.strip():  # a list of addresses: TLS checks the name of the first
        options.append(("grpc.default_authority", address.split(",")[0].strip()))
    if security.root_certificates is None:
        return grpc.insecure_channel(target, options=options)
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    credentials = grpc.ssl_channel_credentials(security.root_certificates, security.client_key, security.client_cert)
    return grpc.secure_channel(target, credentials, options=options)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The --tls-ca/--tls-cert/--tls-key/--tls-server-name options of every command that calls the server."""
    parser.add_argument("--tls-ca", type=Path, help="CA certificate to verify the server (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client key for mutual TLS")
    parser.add_argument("--tls-server-name", help="expected server name in its certificate")


def security_from_args(args: argparse.Namespace) -> ChannelSecurity:
    """ChannelSecurity from the options of `add_tls_arguments` plus `--token`."""
    return ChannelSecurity(
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        client_cert=args.tls_cert.read_bytes() if args.tls_cert else None,
        client_key=args.tls_key.read_bytes() if args.tls_key else None,
        token=args.token, server_name=args.tls_server_name)
