"""Client-side channel settings shared by every caller of the server (client library, client and admin CLIs).

Lives in `fedrecon.proto` so the server's admin CLI can open a channel without importing the client
package (data flows client -> proto -> server, never server -> client).
"""

from __future__ import annotations

import argparse
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


def open_channel(address: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    """An insecure channel, or a TLS channel (optionally mutual); the token travels as per-call metadata."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    security = security or ChannelSecurity()
    if security.root_certificates is None:
        return grpc.insecure_channel(address, options=options)
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    credentials = grpc.ssl_channel_credentials(security.root_certificates, security.client_key, security.client_cert)
    return grpc.secure_channel(address, credentials, options=options)


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
