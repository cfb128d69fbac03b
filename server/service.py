"""The `Reconnaissance` gRPC service: decodes and checks requests, calls the store, maps errors to statuses.

Every refusal answers a precise status (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) and changes
nothing; the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grpc

from fedrecon import __version__
from fedrecon.proto import codec
from fedrecon.proto.codec import MAX_COUNT
from fedrecon.proto.fedrecon.v1 import recon_pb2 as pb
from fedrecon.proto.fedrecon.v1 import recon_pb2_grpc as rpc
from fedrecon.server.ratelimit import refuse_for_now
from fedrecon.server.store import (
    MAX_SPACE_EXAMPLES,
    InvalidRequest,
    Limits,
    PrototypeStore,
    PullResult,
    SeqReused,
    SequenceGap,
    StoreError,
    StoreUnavailable,
    UnknownClient,
    VersionAhead,
)

log = logging.getLogger("fedrecon.service")


def limits_message(limits: Limits) -> pb.Limits:
    """The limits as the wire message that Info returns."""
    return pb.Limits(max_classes_per_push=limits.max_classes_per_push, max_message_bytes=limits.max_message_bytes,
                     max_class_id_bytes=limits.max_class_id_bytes, max_dim=limits.max_dim, max_count=MAX_COUNT,
                     max_space_examples=MAX_SPACE_EXAMPLES, max_reply_bytes=limits.max_reply_bytes)


# Identifies the pushing client: in open mode the message's client_id; with auth, the token's owner.
Identify = Callable[[pb.PushRequest, grpc.ServicerContext], str]


def identify_from_message(request: pb.PushRequest, context: grpc.ServicerContext) -> str:
    """Open mode: trust the client_id field of the push."""
    return request.client_id


STATUS_OF: list[tuple[type[StoreError], grpc.StatusCode]] = [
    (SequenceGap, grpc.StatusCode.FAILED_PRECONDITION),
    (SeqReused, grpc.StatusCode.ALREADY_EXISTS),
    (VersionAhead, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownClient, grpc.StatusCode.NOT_FOUND),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_of(error: Exception) -> grpc.StatusCode:
    """The gRPC status for a store or codec error."""
    if isinstance(error, codec.InvalidMessage):
        return grpc.StatusCode.INVALID_ARGUMENT
    for kind, code in STATUS_OF:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class ReconnaissanceService(rpc.ReconnaissanceServicer):
    """Push / Pull / Watch / Info over a `PrototypeStore`."""

    def __init__(self, store: PrototypeStore, limits: Limits | None = None,
                 identify: Identify = identify_from_message,
                 pull: Callable[[str, int], PullResult] | None = None) -> None:
        self.store = store
        if limits is not None:  # the store enforces the push limits, so every caller gets the same rules
            store.limits = limits
        self.limits = store.limits
        self.identify = identify
        self.pull = pull or store.pull  # e.g. `RobustMerge.pull` for robust spaces
        self.stopping = threading.Event()
        self._watch_slots = threading.BoundedSemaphore(self.limits.max_watch_streams)

    def _refuse(self, context: grpc.ServicerContext, error: Exception, rpc_name: str) -> None:
        code = status_of(error)
        if isinstance(error, SequenceGap | SeqReused):
            context.set_trailing_metadata((("fedrecon-expected-seq", str(error.expected)),))
        log.info("%s refused: %s", rpc_name, error, extra={"status": code.name})
        context.abort(code, str(error))

    def Push(self, request: pb.PushRequest, context: grpc.ServicerContext) -> pb.PushReply:  # noqa: N802
        """Merge one client's deltas exactly once."""
        try:
            client_id = self.identify(request, context)
            deltas = codec.decode_deltas(request.deltas)  # the wire format; the store checks the rules
            result = self.store.push(client_id, request.space, request.seq, deltas.class_ids, deltas.counts,
                                     deltas.means)
        except (StoreError, codec.InvalidMessage) as error:
            self._refuse(context, error, "Push")
        return pb.PushReply(seq=result.seq, version=result.version, classes=result.classes,
                            duplicate=result.duplicate)

    def _reply(self, result: PullResult, dtype: int) -> pb.PullReply:
        reply = pb.PullReply(space=result.space, version=result.version)
        codec.encode_deltas_into(reply.classes, result.class_ids, result.counts, result.means, dtype or pb.FLOAT32)
        return reply

    def Pull(self, request: pb.PullRequest, context: grpc.ServicerContext) -> pb.PullReply:  # noqa: N802
        """Merged prototypes of a space changed since a version."""
        try:
            self.limits.check_text("space", request.space)
            codec.dtype_code(request.dtype or pb.FLOAT32)
            return self._reply(self.pull(request.space, request.since), request.dtype)
        except (StoreError, codec.InvalidMessage) as error:
            self._refuse(context, error, "Pull")
        raise AssertionError("unreachable")

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.PullReply]:  # noqa: N802
        """Stream the changes of a space: one reply per batch of applied operations."""
        if not self._watch_slots.acquire(blocking=False):
            refuse_for_now(context, 1.0, f"too many watch streams (limit {self.limits.max_watch_streams}); retry later")
        try:
            self.limits.check_text("space", request.space)
            codec.dtype_code(request.dtype or pb.FLOAT32)
            since = request.since
            while context.is_active() and not self.stopping.is_set():
                if not self.store.wait_for_change(since, timeout=0.5):
                    continue
                result = self.pull(request.space, since)
                since = result.version
                if result.class_ids:
                    yield self._reply(result, request.dtype)
        except (StoreError, codec.InvalidMessage) as error:
            self._refuse(context, error, "Watch")
        finally:
            self._watch_slots.release()

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:  # noqa: N802
        """Server version, store id, global version, spaces and limits."""
        info = self.store.info()
        spaces = [pb.SpaceInfo(**s) for s in info["spaces"]]
        return pb.InfoReply(server_version=__version__, store_id=info["store_id"], version=info["version"],
                            spaces=spaces, limits=limits_message(self.limits), clients=info["clients"])
