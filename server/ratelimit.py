"""Per-client rate limits as a gRPC interceptor: pushes per second (token bucket) and concurrent streams.

A push over its client's budget, or a stream beyond the client's concurrent-stream limit, is answered
RESOURCE_EXHAUSTED with the trailer `fedrecon-retry-after-ms` before the service sees it: that trailer
marks the refusal as transient (retry the same request, same seq, after that long), unlike gRPC's own
RESOURCE_EXHAUSTED for a message over the size limit, which carries none and never succeeds on retry.
The client is the token's owner under auth, the message's `client_id` in open mode, and for streams
without auth the peer's address.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from fedrecon.proto import trailers
from fedrecon.server.auth import PUSH_METHOD, PUSH_STREAM_METHOD, TokenStore, bearer_token


def refuse_for_now(context: grpc.ServicerContext, seconds: float, details: str) -> None:
    """Abort with a transient RESOURCE_EXHAUSTED: the trailer says when a retry may succeed."""
    context.set_trailing_metadata(((trailers.RETRY_AFTER_MS, str(int(seconds * 1000) + 1)),))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)


@dataclass(frozen=True)
class RateLimits:
    """pushes_per_second <= 0 and max_streams_per_client <= 0 switch a limit off."""

    pushes_per_second: float = 0.0
    push_burst: int = 0
    max_streams_per_client: int = 0

    @property
    def active(self) -> bool:
        """Whether any limit is on."""
        return self.pushes_per_second > 0 or self.max_streams_per_client > 0


class TokenBuckets:
    """One token bucket per key: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        self.burst = float(max(1, burst or int(rate) or 1))
        self.clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Take one token; returns 0.0 if granted, else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            tokens, last = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class StreamSlots:
    """Counts open streams per key and refuses beyond a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Open one stream for `key` if under the limit."""
        with self._lock:
            n = self._open.get(key, 0)
            if n >= self.limit:
                return False
            self._open[key] = n + 1
            return True

    def release(self, key: str) -> None:
        """Close one stream of `key`."""
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n <= 0:
                self._open.pop(key, None)
            else:
                self._open[key] = n


class RateLimitInterceptor(grpc.ServerInterceptor):
    """Applies `RateLimits` to pushes (per client) and to server streams (per client)."""

    def __init__(self, limits: RateLimits, tokens: TokenStore | None = None) -> None:
        self.limits = limits
        self.tokens = tokens
        self.buckets = TokenBuckets(limits.pushes_per_second, limits.push_burst) if limits.pushes_per_second > 0 \
            else None
        self.streams = StreamSlots(limits.max_streams_per_client) if limits.max_streams_per_client > 0 else None

    def _key(self, request: Any, context: grpc.ServicerContext) -> str:
        if self.tokens is not None:
            token = bearer_token(context.invocation_metadata())
            principal = self.tokens.lookup(token) if token else None
            if principal is not None:
                return principal.client_id
        client_id = getattr(request, "client_id", "")
        if client_id:
            return client_id
        peer = context.peer() or ""
        return peer.rsplit(":", 1)[0]

    def _wait_or_refuse(self, request: Any, context: grpc.ServicerContext) -> None:
        """Take the push's token from its client's bucket, or refuse it as transient (retry-after trailer)."""
        assert self.buckets is not None
        wait = self.buckets.take(self._key(request, context))
        if wait > 0:
            refuse_for_now(context, wait, f"push rate limit {self.limits.pushes_per_second:g}/s exceeded; "
                           f"retry in {wait:.3f} s")

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """Wrap pushes with the per-client bucket and streams with the per-client slot count."""
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        kwargs = dict(request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)
        if handler_call_details.method == PUSH_METHOD and self.buckets is not None and handler.unary_unary:
            inner = handler.unary_unary

            def limited_push(request: Any, context: grpc.ServicerContext) -> Any:
                self._wait_or_refuse(request, context)
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(limited_push, **kwargs)
        if handler_call_details.method == PUSH_STREAM_METHOD and self.buckets is not None and handler.stream_stream:
            inner_pushes = handler.stream_stream

            def limited_pushes(requests: Any, context: grpc.ServicerContext) -> Any:
                def metered() -> Any:  # one token per push on the stream, as for unary pushes
                    for request in requests:
                        self._wait_or_refuse(request, context)
                        yield request
                yield from inner_pushes(metered(), context)
            return grpc.stream_stream_rpc_method_handler(limited_pushes, **kwargs)
        if handler.unary_stream and self.streams is not None:
            inner_stream = handler.unary_stream

            def limited_stream(request: Any, context: grpc.ServicerContext) -> Any:
                key = self._key(request, context)
                if not self.streams.acquire(key):
                    refuse_for_now(context, 1.0, f"more than {self.limits.max_streams_per_client} concurrent "
                                   f"streams for {key!r}; retry when one ends")
                try:
                    yield from inner_stream(request, context)
                finally:
                    self.streams.release(key)

            return grpc.unary_stream_rpc_method_handler(limited_stream, **kwargs)
        return handler
