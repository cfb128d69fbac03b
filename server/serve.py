"""The merge server in one place: `ServerConfig` holds everything a server needs, `serve(config)` starts it.

`fedrecon server` parses its options into a `ServerConfig`; tests, benchmarks and experiments that want a
server in process call the same `serve`. The server is the Reconnaissance service, the Admin service,
health checking and reflection on one gRPC port, behind metrics, authentication and rate limits.
Without a token store the server runs in the explicit, loudly logged open mode.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from fedrecon.proto.limits import Limits
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.admin import SERVICE_NAME as ADMIN_SERVICE_NAME
from fedrecon.server.admin import AdminService
from fedrecon.server.auth import AuthInterceptor, TokenIdentity, TokenStore
from fedrecon.server.durable import DatabaseError
from fedrecon.server.log import location
from fedrecon.server.metrics import ServerMetrics
from fedrecon.server.ratelimit import RateLimitInterceptor, RateLimits
from fedrecon.server.robust import RobustConfig, RobustMerge
from fedrecon.server.service import Identify, ReconnaissanceService, identify_from_message
from fedrecon.server.store import PrototypeStore

log = logging.getLogger("fedrecon.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reconnaissance"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
INSECURE_WARNING = ("INSECURE MODE: no token file; any caller may push as any client id and call the Admin "
                    "service. Use only for local experiments; start with --tokens FILE otherwise.")


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM); `client_ca` turns on mutual TLS (client certificates required)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=self.client_ca is not None)


@dataclass(frozen=True)
class ServerConfig:
    """Everything a merge server needs: its address, store, security, limits, merge rules and threads.

    `db` is a SQLite file or a `postgresql://` URL (replicas share one), None keeps everything in memory;
    `synchronous`, `checkpoint_every`, `repair` and `limits` open that store. A store handed to `serve`
    keeps its own limits (then `limits` must be None or the same). `tokens` (a token file or store) or an
    explicit `insecure`, never both. `robust` maps a space ('*': every space) to its robust merge.
    """

    host: str = "127.0.0.1"
    port: int = 0
    db: str | Path | None = None
    synchronous: str = "FULL"
    checkpoint_every: int = 20_000
    repair: bool = False
    limits: Limits | None = None
    tokens: TokenStore | str | Path | None = None
    insecure: bool = False
    tls: TlsConfig | None = None
    rate_limits: RateLimits | None = None
    robust: Mapping[str, RobustConfig] = field(default_factory=dict)
    workers: int = 16
    metrics_port: int | None = None
    grace: float = 5.0
    interceptors: tuple[grpc.ServerInterceptor, ...] = ()  # innermost, after auth and rate limits (e.g. tests)

    def __post_init__(self) -> None:
        if self.tokens is None and not self.insecure:
            raise ValueError("give --tokens FILE (see `fedrecon admin token add`) or, for local experiments only, "
                             "--insecure")
        if self.tokens is not None and self.insecure:
            raise ValueError("--tokens and --insecure exclude each other")


def open_store(config: ServerConfig) -> PrototypeStore:
    """The store `config.db` names, with the config's durability settings and limits."""
    try:
        return PrototypeStore(config.db, synchronous=config.synchronous, checkpoint_every=config.checkpoint_every,
                              limits=config.limits, repair=config.repair)
    except (OSError, sqlite3.Error, DatabaseError) as error:
        where = ":memory:" if config.db is None else location(config.db)
        raise DatabaseError(f"cannot open database {where}: {error}") from error


def enable_reflection(server: grpc.Server, service_names: tuple[str, ...]) -> None:
    """Serve gRPC reflection as grpc.reflection.v1 and v1alpha (same messages on the wire; grpcio ships v1alpha)."""
    names = (*service_names, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1,
                                                                          {"ServerReflectionInfo": v1}),))


def _guards(config: ServerConfig, tokens: TokenStore | None,
            metrics: ServerMetrics | None) -> tuple[tuple[grpc.ServerInterceptor, ...], Identify]:
    """The interceptors (metrics outermost, so refusals by auth and rate limits are counted too, then auth, rate
    limits and the config's own) and how a push's client is identified (the token's owner, or the message's)."""
    interceptors: list[grpc.ServerInterceptor] = [metrics.interceptor] if metrics is not None else []
    identify: Identify = identify_from_message
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens))
        identify = TokenIdentity(tokens)
    else:
        log.warning(INSECURE_WARNING)
    if config.rate_limits is not None and config.rate_limits.active:
        interceptors.append(RateLimitInterceptor(config.rate_limits, tokens))
    return (*interceptors, *config.interceptors), identify


class ReconServer:
    """A running merge server (made by `serve`): its address, then a graceful stop that closes the store."""

    def __init__(self, grpc_server: grpc.Server, service: ReconnaissanceService, health_servicer: health.HealthServicer,
                 port: int, config: ServerConfig, metrics: ServerMetrics | None) -> None:
        self.grpc_server, self.service, self.health = grpc_server, service, health_servicer
        self.store = service.store
        self.port, self.host, self.tls, self.grace = port, config.host, config.tls is not None, config.grace
        self.metrics = metrics
        self.metrics_port: int | None = None

    @property
    def address(self) -> str:
        """host:port the server listens on (the real port when started with port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace` s, default the config's), end watches, close
        the store and the metrics endpoint."""
        self.health.enter_graceful_shutdown()
        self.service.stopping.set()
        self.grpc_server.stop(self.grace if grace is None else grace).wait()
        self.store.close()
        if self.metrics is not None and self.metrics_port is not None:
            self.metrics.stop()
        log.info("stopped", extra={"version": self.store.version})

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server terminates."""
        return self.grpc_server.wait_for_termination(timeout)


def _bind(config: ServerConfig, store: PrototypeStore, tokens: TokenStore | None) -> ReconServer:
    """The gRPC server with every service added and its port bound (not started yet)."""
    metrics = ServerMetrics(store) if config.metrics_port is not None else None
    interceptors, identify = _guards(config, tokens, metrics)
    if config.robust:
        store.merge_rule = RobustMerge(config.robust)
    service = ReconnaissanceService(store, identify)
    streams = store.limits.max_watch_streams + store.limits.max_push_streams  # threads of their own: open
    # streams never take the threads of unary calls
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers + streams, thread_name_prefix="fedrecon-rpc"),
        options=[("grpc.max_receive_message_length", store.limits.max_message_bytes),
                 ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)],
        interceptors=interceptors)
    rpc.add_ReconnaissanceServicer_to_server(service, grpc_server)
    arpc.add_AdminServicer_to_server(AdminService(store, tokens), grpc_server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    enable_reflection(grpc_server, (SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME))
    target = f"{config.host}:{config.port}"
    port = (grpc_server.add_insecure_port(target) if config.tls is None
            else grpc_server.add_secure_port(target, config.tls.credentials()))
    if port == 0:
        raise OSError(f"could not bind {target}")
    return ReconServer(grpc_server, service, health_servicer, port, config, metrics)


def _start(server: ReconServer, config: ServerConfig) -> ReconServer:
    """Serve, mark every service SERVING for health checks, then open the metrics endpoint if asked for."""
    server.grpc_server.start()
    for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
        server.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"address": server.address, "tls": server.tls,
                               "store": str(server.store.path or ":memory:")})
    if server.metrics is not None and config.metrics_port is not None:
        server.metrics_port = server.metrics.serve(config.host, config.metrics_port)
        log.info("metrics", extra={"url": f"http://{config.host}:{server.metrics_port}/metrics"})
    return server


def serve(config: ServerConfig, store: PrototypeStore | None = None) -> ReconServer:
    """Start a merge server as `config` says, on `store` (it keeps its own limits) or the one `config.db` names
    (closed again if the server cannot start); `stop()` closes the store either way."""
    if store is not None and config.limits is not None and config.limits != store.limits:
        raise ValueError("the store owns its limits: build it with PrototypeStore(..., limits=...) instead")
    tokens = TokenStore(config.tokens) if isinstance(config.tokens, str | Path) else config.tokens
    opened = store is None
    store = open_store(config) if store is None else store
    server = None
    try:
        server = _bind(config, store, tokens)
        return _start(server, config)
    except Exception:
        if server is not None:
            server.grpc_server.stop(None)
        if opened:
            store.close()
        raise
