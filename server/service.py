"""The `Reconnaissance` gRPC service: decodes and checks requests, calls the store, maps errors to statuses.

Every refusal answers a precise status (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) and changes
nothing; the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from fedrecon import __version__
from fedrecon.proto import codec, trailers
from fedrecon.proto.limits import MAX_COUNT, MAX_SPACE_EXAMPLES, Limits
from fedrecon.proto.payloads import PushAck
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.proto.validate import check_text
from fedrecon.server.errors import (
    EarlierPushRefused,
    InvalidPush,
    InvalidRequest,
    QuotaExceeded,
    SeqReused,
    SequenceGap,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    UnknownClient,
    VersionAhead,
)
from fedrecon.server.pending import Pending
from fedrecon.server.ratelimit import refuse_for_now
from fedrecon.server.store import PrototypeStore
from fedrecon.server.stream import EMPTY, END, StreamWindow

log = logging.getLogger("fedrecon.service")

UNAVAILABLE_RETRY_MS = "500"  # the retry hint of an UNAVAILABLE refusal (the database unreachable, a replica behind)


def limits_message(limits: Limits) -> pb.Limits:
    """The limits as the wire message that Info returns."""
    return pb.Limits(max_classes_per_push=limits.max_classes_per_push, max_message_bytes=limits.max_message_bytes,
                     max_class_id_bytes=limits.max_class_id_bytes, max_dim=limits.max_dim, max_count=MAX_COUNT,
                     max_space_examples=MAX_SPACE_EXAMPLES, max_reply_bytes=limits.max_reply_bytes,
                     max_stream_window=limits.max_stream_window)


def push_reply(ack: PushAck) -> pb.PushReply:
    """The wire answer to one push."""
    return pb.PushReply(seq=ack.seq, version=ack.version, classes=ack.classes, duplicate=ack.duplicate)


def _answered(item: object) -> bool:
    """Whether a window item is a push already made durable (its answer can go in the current message)."""
    return isinstance(item, Pending) and item.done.is_set() and item.error is None


# Identifies the pushing client: in open mode the message's client_id; with auth, the token's owner.
Identify = Callable[[pb.PushRequest, grpc.ServicerContext], str]


def identify_from_message(request: pb.PushRequest, context: grpc.ServicerContext) -> str:
    """Open mode: trust the client_id field of the push ("" for requests without one: an unknown caller)."""
    return getattr(request, "client_id", "")


STATUS_OF: list[tuple[type[StoreError], grpc.StatusCode]] = [
    (SequenceGap, grpc.StatusCode.FAILED_PRECONDITION),
    (EarlierPushRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (SeqReused, grpc.StatusCode.ALREADY_EXISTS),
    (VersionAhead, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownClient, grpc.StatusCode.NOT_FOUND),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreBusy, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
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

    def __init__(self, store: PrototypeStore, identify: Identify = identify_from_message) -> None:
        self.store = store
        self.limits = store.limits  # the store's own: it enforces the push limits, so every caller gets its rules
        self.identify = identify
        self.stopping = threading.Event()
        self._watch_slots = threading.BoundedSemaphore(self.limits.max_watch_streams)
        self._push_stream_slots = threading.BoundedSemaphore(self.limits.max_push_streams)

    def _refuse(self, context: grpc.ServicerContext, error: Exception, rpc_name: str) -> None:
        code = status_of(error)
        if isinstance(error, SequenceGap | SeqReused | EarlierPushRefused):
            metadata = [(trailers.EXPECTED_SEQ, str(error.expected))]
            if getattr(error, "last_digest", ""):  # the client's last merged push, to reconcile by content
                metadata.append((trailers.LAST_DIGEST, error.last_digest))
            context.set_trailing_metadata(tuple(metadata))
        elif isinstance(error, VersionAhead):  # a reset or restored store: the client pulls everything again
            context.set_trailing_metadata(((trailers.PULL_FROM, "0"),))
        log.info("%s refused: %s", rpc_name, error, extra={"status": code.name})
        if isinstance(error, StoreBusy):  # transient: the trailer says when to retry
            refuse_for_now(context, error.retry_after, str(error))
        if isinstance(error, StoreUnavailable):
            context.set_trailing_metadata(((trailers.RETRY_AFTER_MS, UNAVAILABLE_RETRY_MS),))
        context.abort(code, str(error))

    def _await_caller(self, context: grpc.ServicerContext, since: int = 0) -> None:
        """Wait (bounded) until this replica has applied the version the caller last saw (`fedrecon-min-version`,
        e.g. its own push on another replica) and `since`; UNAVAILABLE (retry, maybe on another replica) if not."""
        wanted = since
        for key, value in context.invocation_metadata() or ():
            if key == trailers.MIN_VERSION and value.isdigit():
                wanted = max(wanted, int(value))
        if wanted and not self.store.await_version(wanted) and wanted > since:
            raise StoreUnavailable(f"this server has applied version {self.store.version}, the caller has seen "
                                   f"{wanted}; it did not catch up in time (retry)")

    def _submit(self, request: pb.PushRequest, context: grpc.ServicerContext, after: Pending | None = None) -> Pending:
        """Identify, decode and queue one push (the store checks the rules); `after`: the stream's previous push."""
        client_id = self.identify(request, context)
        deltas = codec.decode_deltas(request.deltas, float64=False, wire_only=True)  # the store checks the rules
        return self.store.submit_push(client_id, request.seq, request.space, deltas, after=after)

    def Push(self, request: pb.PushRequest, context: grpc.ServicerContext) -> pb.PushReply:  # noqa: N802
        """Merge one client's deltas exactly once."""
        try:
            result = self._submit(request, context).wait()
        except (StoreError, codec.InvalidMessage) as error:
            self._refuse(context, error, "Push")
        return push_reply(result)

    def PushStream(self, requests: Iterator[pb.PushRequest],  # noqa: N802
                   context: grpc.ServicerContext) -> Iterator[pb.PushStreamReply]:
        """Many pushes on one call: a reader thread queues them as they arrive (a bounded `StreamWindow`), and
        they are answered in order once durable, every answer that is ready in one message (a message per push
        would cost a send and two thread switches each); the first refusal ends the call. At most
        `max_push_streams` calls at once (more: RESOURCE_EXHAUSTED, retry later)."""
        if not self._push_stream_slots.acquire(blocking=False):
            refuse_for_now(context, 1.0, f"too many push streams (limit {self.limits.max_push_streams}); retry later "
                           "or push one at a time")
        try:
            yield from self._answer_stream(requests, context)
        finally:
            self._push_stream_slots.release()

    def _answer_stream(self, requests: Iterator[pb.PushRequest],
                       context: grpc.ServicerContext) -> Iterator[pb.PushStreamReply]:
        """The answers of one PushStream call; returns as soon as the call ends, whatever the client does."""
        window = StreamWindow(self.limits.max_stream_window, self.limits.max_stream_window_bytes)
        threading.Thread(target=self._read_pushes, args=(requests, context, window), daemon=True,
                         name="fedrecon-push-stream").start()
        idle_since = time.monotonic()
        while True:
            item = window.take(0.5)
            if item is END or not context.is_active() or self.stopping.is_set():
                return
            if item is EMPTY:
                if time.monotonic() - idle_since > self.limits.stream_idle_seconds:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no push for {self.limits.stream_idle_seconds:g}"
                                  " s; the stream is closed (open another to push again)")
                continue
            try:
                if isinstance(item, BaseException):
                    raise item
                while not item.done.wait(0.5):  # the store answers every push; the call may end first
                    if not context.is_active():
                        return
                replies = [push_reply(item.wait())]
            except (StoreError, codec.InvalidMessage) as error:
                self._refuse(context, error, "PushStream")
            while (ready := window.peek_ready(_answered)) not in (EMPTY, END):
                replies.append(push_reply(ready.wait()))
            yield pb.PushStreamReply(replies=replies)
            idle_since = time.monotonic()

    def _read_pushes(self, requests: Iterator[pb.PushRequest], context: grpc.ServicerContext,
                     window: StreamWindow) -> None:
        """Queue a stream's pushes in order, each conditional on the one before; stop at the first refusal.
        Whatever ends the reading (the client's end, a cancel, a refusal), the window is closed."""
        after, end = None, None
        try:
            for request in requests:
                after = self._submit(request, context, after)
                if not window.put(after, request.ByteSize(), context.is_active):
                    return
        except Exception as error:  # noqa: BLE001 - a refusal (or an abort) is answered by the handler
            end = error
        finally:
            window.close(end)

    def _page(self, space: str, since: int, page_token: str, dtype: int, max_reply_bytes: int,
              epoch: str = "") -> pb.PullReply:
        """One page of a pull since `since` of `epoch`, under the page budget (the server's, or the request's
        smaller one)."""
        check_text("space", space, self.limits, InvalidPush)
        code = codec.dtype_code(dtype or pb.FLOAT32)
        budget = min(max_reply_bytes or self.limits.max_reply_bytes, self.limits.max_reply_bytes)
        result = self.store.pull(space, since, epoch, page_token=page_token, max_bytes=budget,
                                 itemsize=codec.DTYPES[code].itemsize)
        reply = pb.PullReply(space=result.space, version=result.version, next_page_token=result.next_page_token,
                             epoch=result.epoch)
        codec.encode_deltas_into(reply.classes, result.deltas, code)
        return reply

    def Pull(self, request: pb.PullRequest, context: grpc.ServicerContext) -> pb.PullReply:  # noqa: N802
        """Merged prototypes of a space changed since a version, one page at a time."""
        try:
            self._await_caller(context, request.since)
            return self._page(request.space, request.since, request.page_token, request.dtype,
                              request.max_reply_bytes, request.epoch)  # the store refuses a stale since/epoch
        except (StoreError, codec.InvalidMessage) as error:
            self._refuse(context, error, "Pull")
        raise AssertionError("unreachable")

    def _check_caller(self, request: pb.WatchRequest, context: grpc.ServicerContext, caller: str,
                      revoked: int) -> None:
        """End a stream whose token was removed (UNAUTHENTICATED, by `identify`) or whose client was revoked."""
        self.identify(request, context)
        if caller and self.store.revoked_at(caller) > revoked:
            log.warning("watch ended: client revoked", extra={"client_id": caller})
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"client {caller!r} was revoked; its streams end")

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.PullReply]:  # noqa: N802
        """Stream the changes of a space: each pass of changes in pages, as Pull pages them."""
        if not self._watch_slots.acquire(blocking=False):
            refuse_for_now(context, 1.0, f"too many watch streams (limit {self.limits.max_watch_streams}); retry later")
        try:
            check_text("space", request.space, self.limits, InvalidPush)
            codec.dtype_code(request.dtype or pb.FLOAT32)
            self._await_caller(context, request.since)
            self.store.check_since(request.since, request.epoch)
            caller = self.identify(request, context)
            revoked = self.store.revoked_at(caller) if caller else 0
            since, token = request.since, ""
            while context.is_active() and not self.stopping.is_set():
                changed = bool(token) or self.store.wait_for_change(since, timeout=0.5)
                self._check_caller(request, context, caller, revoked)  # at least every 0.5 s
                if not changed:
                    continue
                reply = self._page(request.space, since, token, request.dtype, request.max_reply_bytes)
                paging, token = bool(token), reply.next_page_token
                if not token:
                    since = reply.version
                if reply.classes.class_ids or token or paging:  # a pass's last page ends it, even if empty
                    yield reply
        except (StoreError, codec.InvalidMessage) as error:
            self._refuse(context, error, "Watch")
        finally:
            self._watch_slots.release()

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:  # noqa: N802
        """Server version, store id, global version, spaces and limits."""
        info = self.store.info()
        spaces = [pb.SpaceInfo(**s) for s in info["spaces"]]
        return pb.InfoReply(server_version=__version__, store_id=info["store_id"], version=info["version"],
                            spaces=spaces, limits=limits_message(self.limits), clients=info["clients"],
                            epoch=self.store.epoch)
