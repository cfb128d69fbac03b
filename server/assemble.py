"""Assemble a `ReconServer` with the security and reliability parts: tokens, admin, robust merge, rate limits.

Used by `fedrecon server` and by tests and benchmarks that want the same wiring in-process.
Without a token store the server runs in the explicit, loudly logged open mode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import grpc

from fedrecon.proto.limits import Limits
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.server.admin import SERVICE_NAME as ADMIN_SERVICE_NAME
from fedrecon.server.admin import AdminService
from fedrecon.server.app import ReconServer, TlsConfig
from fedrecon.server.auth import AuthInterceptor, TokenIdentity, TokenStore
from fedrecon.server.metrics import ServerMetrics
from fedrecon.server.ratelimit import RateLimitInterceptor, RateLimits
from fedrecon.server.robust import RobustConfig, RobustMerge
from fedrecon.server.service import identify_from_message
from fedrecon.server.store import PrototypeStore

log = logging.getLogger("fedrecon.server")

INSECURE_WARNING = ("INSECURE MODE: no token file; any caller may push as any client id and call the Admin "
                    "service. Use only for local experiments; start with --tokens FILE otherwise.")


def build_server(
    store: PrototypeStore,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tokens: TokenStore | str | Path | None = None,
    insecure: bool = False,
    tls: TlsConfig | None = None,
    limits: Limits | None = None,
    rate_limits: RateLimits | None = None,
    robust: Mapping[str, RobustConfig] | None = None,
    max_workers: int = 16,
    metrics: ServerMetrics | None = None,
) -> ReconServer:
    """A ReconServer with the Admin service; auth from `tokens`, or open mode only when `insecure` is True."""
    if tokens is None and not insecure:
        raise ValueError("a server needs a token file (--tokens FILE) or an explicit --insecure")
    if tokens is not None and insecure:
        raise ValueError("--tokens and --insecure exclude each other")
    token_store = TokenStore(tokens) if isinstance(tokens, str | Path) else tokens
    interceptors: list[grpc.ServerInterceptor] = []
    identify = identify_from_message
    if token_store is not None:
        interceptors.append(AuthInterceptor(token_store))
        identify = TokenIdentity(token_store)
    else:
        log.warning(INSECURE_WARNING)
    if rate_limits is not None and rate_limits.active:
        interceptors.append(RateLimitInterceptor(rate_limits, token_store))
    if metrics is not None:  # outermost, so refusals by auth and rate limits are counted too
        interceptors.insert(0, metrics.interceptor)
    if robust:
        store.merge_rule = RobustMerge(robust)
    admin = AdminService(store, token_store)
    server = ReconServer(
        store, host, port, limits=limits, max_workers=max_workers, tls=tls, identify=identify,
        interceptors=tuple(interceptors),
        services=((ADMIN_SERVICE_NAME, lambda s: arpc.add_AdminServicer_to_server(admin, s)),))
    return server
