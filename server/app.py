"""A running merge server: the gRPC server with the Reconnaissance service, health checking and reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from fedrecon.proto.limits import Limits
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.service import Identify, ReconnaissanceService, identify_from_message
from fedrecon.server.store import PrototypeStore

log = logging.getLogger("fedrecon.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reconnaissance"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


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


class ReconServer:
    """The merge service on a port: start, then stop gracefully (in-flight pushes finish, store closes)."""

    def __init__(
        self,
        store: PrototypeStore,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: Limits | None = None,
        max_workers: int = 16,
        tls: TlsConfig | None = None,
        identify: Identify = identify_from_message,
        interceptors: tuple[grpc.ServerInterceptor, ...] = (),
        services: tuple[tuple[str, Callable[[grpc.Server], None]], ...] = (),
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.service = ReconnaissanceService(store, self.limits, identify)
        options = [
            ("grpc.max_receive_message_length", self.limits.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
        streams = self.service.limits.max_watch_streams + self.service.limits.max_push_streams  # threads of
        # their own: open streams never take the threads of unary calls
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers + streams,
                                                                  thread_name_prefix="fedrecon-rpc"),
                                       options=options, interceptors=interceptors)
        rpc.add_ReconnaissanceServicer_to_server(self.service, self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        for _, add_service in services:  # e.g. the Admin service
            add_service(self.grpc_server)
        self.service_names = (SERVICE_NAME, *(name for name, _ in services))
        enable_reflection(self.grpc_server, (*self.service_names, health.SERVICE_NAME))
        target = f"{host}:{port}"
        if tls is None:
            self.port = self.grpc_server.add_insecure_port(target)
        else:
            self.port = self.grpc_server.add_secure_port(target, tls.credentials())
        if self.port == 0:
            raise OSError(f"could not bind {target}")
        self.host = host
        self.tls = tls is not None

    @property
    def address(self) -> str:
        """host:port the server listens on (the real port when started with port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> ReconServer:
        """Start serving and mark the services SERVING for health checks."""
        self.grpc_server.start()
        for name in ("", *self.service_names):  # each service, the Admin one included
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        store = str(self.store.path or ":memory:")
        log.info("serving", extra={"address": self.address, "tls": self.tls, "store": store})
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace` s), end watches, close the store."""
        self.health.enter_graceful_shutdown()
        self.service.stopping.set()
        self.grpc_server.stop(grace).wait()
        self.store.close()
        log.info("stopped", extra={"version": self.store.version})

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server terminates."""
        return self.grpc_server.wait_for_termination(timeout)
