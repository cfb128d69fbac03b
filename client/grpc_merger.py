"""`GrpcMerger`: the stateless gRPC client of the Reconnaissance service (encode, retry, decode).

It implements `proto.merger.Merger` over one channel: a numbered push is encoded and sent with retries of
transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, rate limiting) within a deadline; a pull follows its pages
and pulls everything again when the store's history no longer holds `since`. It keeps no durable state: the
numbering and the outbox belong to the client's `Replica` and `ClientState`. The only thing it remembers is the
highest store version it was answered, so a pull from any replica waits until that replica has it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace

import grpc

from fedrecon.client.pages import decode_page, pulled_from_reply, snapshot_of
from fedrecon.proto import codec, trailers
from fedrecon.proto.channel import ChannelSecurity, open_channel
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc

log = logging.getLogger("fedrecon.client")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Refusals of the push's content: sending it again can never succeed, so the pending push is dropped.
PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE}
# Refusals of the caller, not the push: nothing was merged, so the pending pushes are given back (not kept).
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class ServerUnreachable(ConnectionError):
    """No server answered at the address within the connect timeout."""


def retry_after(error: grpc.RpcError) -> float | None:
    """Seconds the server asks to wait before retrying (trailer `fedrecon-retry-after-ms`), if it sent one."""
    value = dict(error.trailing_metadata() or ()).get(trailers.RETRY_AFTER_MS)
    try:
        return None if value is None else max(0.0, float(value) / 1000.0)
    except ValueError:
        return None


def is_permanent(error: grpc.RpcError) -> bool:
    """True when a refused push can never succeed: a content refusal, or RESOURCE_EXHAUSTED for size.

    The server marks transient RESOURCE_EXHAUSTED (rate or stream limits) with `fedrecon-retry-after-ms`;
    without it (e.g. gRPC's own message-size refusal) the request is too large and stays so.
    """
    code = error.code()
    return code in PERMANENT or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after(error) is None)


def pull_again(error: grpc.RpcError) -> bool:
    """Whether a Pull/Watch refusal asks for a full pull (trailer `fedrecon-pull-from`, or an older server's text)."""
    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return False
    return dict(error.trailing_metadata() or ()).get(trailers.PULL_FROM) == "0" or \
        "pull again with since=0" in (error.details() or "")


def ack_of(reply: pb.PushReply) -> PushAck:
    """A PushReply as the payload type."""
    return PushAck(reply.seq, reply.version, reply.classes, reply.duplicate)


def info_of(reply: pb.InfoReply) -> dict:
    """An InfoReply as JSON-ready data."""
    limits = reply.limits
    return {
        "server_version": reply.server_version, "store_id": reply.store_id, "version": reply.version,
        "clients": reply.clients,
        "spaces": [{"space": s.space, "dim": s.dim, "classes": s.classes, "examples": s.examples,
                    "version": s.version} for s in reply.spaces],
        "limits": {"max_classes_per_push": limits.max_classes_per_push,
                   "max_message_bytes": limits.max_message_bytes,
                   "max_class_id_bytes": limits.max_class_id_bytes, "max_dim": limits.max_dim,
                   "max_stream_window": limits.max_stream_window},
        "epoch": reply.epoch,
    }


class GrpcMerger:
    """Push, pull, watch and info against one server address; retries, no durable state."""

    def __init__(self, address: str, *, timeout: float = 10.0, retries: int = 8, backoff: float = 0.1,
                 deadline: float | None = None, connect_timeout: float | None = 5.0, dtype: str = "float32",
                 security: ChannelSecurity | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.dtype = dtype
        self._info: dict | None = None
        self._connected = False
        self.seen_version = 0  # the highest store version this client was answered (pushes and pulls, any replica)
        security = security or ChannelSecurity()
        self._metadata = security.metadata()
        self.channel = open_channel(address, security)
        self.stub = rpc.ReconnaissanceStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def _connect(self) -> None:
        """Wait at most `connect_timeout` s for the channel; ServerUnreachable naming the address if it stays down."""
        if self._connected or self.connect_timeout is None:
            return
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise ServerUnreachable(f"no fedrecon server reachable at {self.address} within "
                                    f"{self.connect_timeout:g} s (is it running, is the address right, do TLS settings "
                                    "match?)") from None
        self._connected = True

    def _read_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata of a pull or watch: whichever replica answers waits until it has what this client saw."""
        if not self.seen_version:
            return self._metadata
        return (*self._metadata, (trailers.MIN_VERSION, str(self.seen_version)))

    def saw(self, version: int) -> None:
        """Remember the highest store version this client has seen (an acknowledgement or a pull)."""
        self.seen_version = max(self.seen_version, version)

    def call(self, method, request, retry: bool = True, metadata=None):  # noqa: ANN001, ANN201 - any unary method
        """One unary call, transient failures retried (with backoff, within `deadline`) unless not `retry`."""
        self._connect()
        delay = self.backoff
        give_up = None if self.deadline is None else time.monotonic() + self.deadline
        for attempt in range(self.retries + 1):
            timeout = self.timeout if give_up is None else max(0.05, min(self.timeout, give_up - time.monotonic()))
            try:
                return method(request, timeout=timeout, metadata=metadata or self._metadata, wait_for_ready=retry)
            except grpc.RpcError as error:
                out_of_time = give_up is not None and time.monotonic() + delay >= give_up
                if not retry or error.code() not in RETRYABLE or is_permanent(error) or attempt == self.retries \
                        or out_of_time:
                    raise
                log.info("retrying after %s (attempt %d)", error.code().name, attempt + 1)
                time.sleep(max(delay, retry_after(error) or 0.0))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def server_info(self) -> dict:
        """`info()`, asked once and remembered (store id and limits do not change while a server runs)."""
        if self._info is None:
            self._info = self.info()
        return self._info

    def info(self) -> dict:
        """Server version, store id, global version, spaces, limits."""
        return info_of(self.call(self.stub.Info, pb.InfoRequest()))

    def request(self, client_id: str, seq: int, space: str, deltas: Deltas, dtype: str | None = None
                ) -> pb.PushRequest:
        """The PushRequest of one numbered push (means in `dtype`, default this merger's)."""
        encoded = codec.encode_deltas(deltas, dtype or self.dtype)
        return pb.PushRequest(client_id=client_id, space=space, seq=seq, deltas=encoded)

    def send(self, request: pb.PushRequest) -> pb.PushReply:
        """One Push call with the usual retries of transient failures."""
        reply = self.call(self.stub.Push, request)
        self.saw(reply.version)
        return reply

    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> PushAck:
        """Merge push `seq` of `client_id` (Merger): encoded, sent with retries, answered once durable."""
        return ack_of(self.send(self.request(client_id, seq, space, deltas)))

    def stream(self, requests: Iterable[pb.PushRequest], count: int) -> Iterator[pb.PushReply]:
        """Pushes on one PushStream call; each reply as it comes (no retries: the caller sends what is left)."""
        self._connect()
        for message in self.stub.PushStream(iter(requests), timeout=self.timeout * max(1, count),
                                            metadata=self._metadata):
            for reply in message.replies:
                self.saw(reply.version)
                yield reply

    def pull(self, space: str, since: int, epoch: str = "", dtype: str | None = None) -> Snapshot:
        """Merged prototypes changed since `since` of `epoch` (Merger). If the store's history no longer holds
        `since` (a server restored from a backup), everything is pulled again: the snapshot has `reset` set and
        replaces the caller's table."""
        try:
            result = self._pull_pages(space, since, dtype, epoch or "")
        except grpc.RpcError as error:
            if not since or not pull_again(error):
                raise
            log.warning("pull since %d of space %s refused (%s); pulling everything again", since, space,
                        error.details())
            result = replace(self._pull_pages(space, 0, dtype, ""), reset=True)
        self.saw(result.version)
        return result

    def _pull_pages(self, space: str, since: int, dtype: str | None, epoch: str) -> Snapshot:
        request = pb.PullRequest(space=space, since=since, dtype=codec.dtype_code(dtype or self.dtype), epoch=epoch)
        reply, pages = self.call(self.stub.Pull, request, metadata=self._read_metadata()), []
        first_version = reply.version
        while True:  # follow the pages; the pull is current to the last one's version
            following = None
            if reply.next_page_token:  # ask for the next page first: the server makes it while this one decodes
                request.page_token = reply.next_page_token
                following = self.stub.Pull.future(request, timeout=self.timeout, metadata=self._metadata)
            pages.append(decode_page(reply))
            if following is None:
                break
            try:
                reply = following.result()
            except grpc.RpcError:  # asked again the usual way, with its retries
                reply = self.call(self.stub.Pull, request)
        return snapshot_of(space, reply.version, pages, first_version, reply.epoch)

    def watch(self, space: str, since: int = 0, dtype: str | None = None, epoch: str = "") -> Iterator[Snapshot]:
        """Stream changes of a space as they are merged (a server stream; cancel by closing the channel). A `since`
        the store no longer holds (see `pull`) restarts from 0; that first snapshot has `reset` set."""
        try:
            yield from self._watch(space, since, dtype, epoch)
        except grpc.RpcError as error:
            if not since or not pull_again(error):
                raise
            yield from self._watch(space, 0, dtype, "", reset=True)

    def _watch(self, space: str, since: int, dtype: str | None, epoch: str, reset: bool = False) -> Iterator[Snapshot]:
        request = pb.WatchRequest(space=space, since=since, dtype=codec.dtype_code(dtype or self.dtype), epoch=epoch)
        pages: list[pb.PullReply] = []
        for reply in self.stub.Watch(request, metadata=self._read_metadata()):
            pages.append(reply)
            if reply.next_page_token:  # one pass of changes arrives in pages; yield it whole
                continue
            result = replace(pulled_from_reply(*pages), reset=reset)
            pages, reset = [], False
            self.saw(result.version)
            yield result
