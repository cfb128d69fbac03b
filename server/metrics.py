"""Prometheus metrics of a merge server: calls, refusals and latency from a gRPC interceptor, store state on scrape.

`ServerMetrics(store)` owns its own registry (several servers in one process never share counters).
Its `interceptor` goes first in the server's interceptor chain, so refusals by authentication and rate
limits count too; the store's spaces, classes, examples, clients, version and group commits are read
through its public attributes at scrape time. `serve(host, port)` exposes `/metrics` over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

RPC_PREFIX = "/fedrecon.v1.Reconnaissance/"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StoreCollector:
    """Store state read on each scrape: version, clients, and per space classes and examples; group commits."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        """The store's gauges and commit counters, as of now."""
        info = self.store.info()
        yield GaugeMetricFamily("fedrecon_store_version", "global version (applied pushes and revocations)",
                                value=info["version"])
        yield GaugeMetricFamily("fedrecon_store_clients", "clients the store has a record of", value=info["clients"])
        yield GaugeMetricFamily("fedrecon_store_spaces", "embedding spaces", value=len(info["spaces"]))
        classes = GaugeMetricFamily("fedrecon_store_classes", "live classes per space", labels=["space"])
        examples = GaugeMetricFamily("fedrecon_store_examples", "examples merged per space", labels=["space"])
        for space in info["spaces"]:
            classes.add_metric([space["space"]], space["classes"])
            examples.add_metric([space["space"]], space["examples"])
        yield classes
        yield examples
        commits, operations = int(self.store.commits), int(self.store.committed_operations)
        yield CounterMetricFamily("fedrecon_store_group_commits", "durable group commits", value=commits)
        yield CounterMetricFamily("fedrecon_store_committed_operations", "operations in those commits",
                                  value=operations)
        yield GaugeMetricFamily("fedrecon_store_group_commit_size_mean", "operations per group commit, mean so far",
                                value=operations / commits if commits else 0.0)


class ServerMetrics:
    """Counters, histograms and gauges of one server, in a registry of its own."""

    def __init__(self, store: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter("fedrecon_rpc_calls", "calls per method and status code", ["method", "code"], registry=r)
        self.refusals = Counter("fedrecon_rpc_refusals", "calls answered with a non-OK status", ["method", "code"],
                                registry=r)
        self.latency = Histogram("fedrecon_rpc_latency_seconds", "time to answer a unary call", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.pushes = Counter("fedrecon_pushes_merged", "pushes applied (retries of an applied push excluded)",
                              registry=r)
        self.duplicates = Counter("fedrecon_push_retries", "retried pushes answered with the first reply", registry=r)
        self.classes = Counter("fedrecon_classes_merged", "class deltas applied", registry=r)
        self.watch_streams = Gauge("fedrecon_watch_streams_open", "Watch streams open now", registry=r)
        r.register(StoreCollector(store))
        self.interceptor = MetricsInterceptor(self)
        self._http: Any = None

    def serve(self, host: str, port: int) -> int:
        """Serve `/metrics` on host:port (0: a free port) in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def stop(self) -> None:
        """Stop the HTTP endpoint (idempotent)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def observe(self, method: str, code: grpc.StatusCode, reply: Any = None) -> None:
        """Record one finished call (and, for a push, what it merged)."""
        name = code.name
        self.calls.labels(method, name).inc()
        if code is not grpc.StatusCode.OK:
            self.refusals.labels(method, name).inc()
        elif method == "Push" and reply is not None:
            self.observe_push(reply)

    def observe_push(self, reply: Any) -> None:
        """Record one answered push (of a Push call, or one of a PushStream call's)."""
        if reply.duplicate:
            self.duplicates.inc()
        else:
            self.pushes.inc()
            self.classes.inc(reply.classes)


def _code(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with: what the handler set (abort sets it too), else OK / UNKNOWN."""
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions keep the raw value
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if isinstance(error, GeneratorExit):  # the client went away mid-stream
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


class MetricsInterceptor(grpc.ServerInterceptor):
    """Wraps the Reconnaissance service's handlers: status codes, latency, pushes, open Watch streams."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """The next handler, measured when it is one of the service's methods."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(RPC_PREFIX):
            return handler
        name = method[len(RPC_PREFIX):]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(name, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(name, handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._pushes(name, handler.stream_stream), handler.request_deserializer,
                handler.response_serializer)
        return handler

    def _unary(self, name: str, behavior: Callable) -> Callable:
        metrics = self.metrics

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            timer = metrics.latency.labels(name).time()
            timer.__enter__()
            reply = error = None
            try:
                reply = behavior(request, context)
                return reply
            except BaseException as exc:
                error = exc
                raise
            finally:
                timer.__exit__(None, None, None)
                metrics.observe(name, _code(context, error), reply)

        return call

    def _pushes(self, name: str, behavior: Callable) -> Callable:
        """PushStream: every answered push counts as a push; the call's status is recorded when it ends."""
        metrics = self.metrics

        def call(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            error = None
            try:
                for message in behavior(requests, context):
                    for reply in message.replies:
                        metrics.observe_push(reply)
                    yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                metrics.observe(name, _code(context, error))

        return call

    def _stream(self, name: str, behavior: Callable) -> Callable:
        metrics = self.metrics

        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            metrics.watch_streams.inc()
            error = None
            try:
                yield from behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                metrics.watch_streams.dec()
                metrics.observe(name, _code(context, error))

        return call

