"""`ReconClient`: the client side of the Reconnaissance service.

Pushes are numbered 1, 2, 3... and retried with the same number on UNAVAILABLE / DEADLINE_EXCEEDED
/ RESOURCE_EXHAUSTED; the number and an unacknowledged push persist in a state file. Pulls are
incremental (the client remembers the version it has per space). Every call has a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.state import ClientState
from fedrecon.proto import codec
from fedrecon.proto.channel import ChannelSecurity, open_channel
from fedrecon.proto.fedrecon.v1 import recon_pb2 as pb
from fedrecon.proto.fedrecon.v1 import recon_pb2_grpc as rpc

log = logging.getLogger("fedrecon.client")

# Refusals after which the push was certainly not applied.
NOT_APPLIED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class SequenceError(RuntimeError):
    """The server expects another sequence number (e.g. the state file was lost or belongs to another store)."""

    def __init__(self, message: str, expected: int | None) -> None:
        super().__init__(message)
        self.expected = expected


@dataclass(frozen=True)
class PushAck:
    """The server's acknowledgement of a push."""

    seq: int
    version: int
    classes: int
    duplicate: bool

    def to_dict(self) -> dict:
        """As a JSON-ready dict."""
        return {"seq": self.seq, "version": self.version, "classes": self.classes, "duplicate": self.duplicate}


@dataclass(frozen=True)
class Pulled:
    """Merged prototypes received from a pull: ids, counts, float64 means, and the version they are current to."""

    space: str
    version: int
    class_ids: list[str]
    counts: np.ndarray
    means: np.ndarray


def pulled_from_reply(reply: pb.PullReply, *more: pb.PullReply) -> Pulled:
    """Decode a PullReply, or the pages of one pull in order (count 0 rows mean a class was removed).

    A later page overrides an earlier one for the same class (it changed while paging); the result is
    current to the last page's version.
    """
    pages = [codec.decode_deltas(r.classes, allow_zero_counts=True) for r in (reply, *more)]
    if len(pages) == 1:
        return Pulled(reply.space, reply.version, pages[0].class_ids, pages[0].counts, pages[0].means)
    latest = {cid: i for i, cid in enumerate(c for p in pages for c in p.class_ids)}  # the last index per id wins
    keep = np.fromiter(latest.values(), dtype=np.int64, count=len(latest))
    counts = np.concatenate([p.counts for p in pages])[keep]
    means = np.concatenate([p.means for p in pages if len(p.class_ids)] or [pages[0].means])[keep]
    return Pulled(reply.space, (more[-1] if more else reply).version, list(latest), counts, means)


class ReconClient:
    """Push, pull, watch and info against one server; exactly-once pushes via a numbered state."""

    def __init__(
        self,
        address: str,
        client_id: str = "",
        *,
        state_path: str | Path | None = None,
        timeout: float = 10.0,
        retries: int = 8,
        backoff: float = 0.1,
        dtype: str = "float32",
        security: ChannelSecurity | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.dtype = dtype
        self.state = ClientState.load(state_path, client_id)
        self.versions: dict[str, int] = {}
        security = security or ChannelSecurity()
        self._metadata = security.metadata()
        self.channel = open_channel(address, security)
        self.stub = rpc.ReconnaissanceStub(self.channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> ReconClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, retry: bool = True):  # noqa: ANN001, ANN202 - any unary stub method
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata, wait_for_ready=retry)
            except grpc.RpcError as error:
                if not retry or error.code() not in RETRYABLE or attempt == self.retries:
                    raise
                log.info("retrying after %s (attempt %d)", error.code().name, attempt + 1)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _send_push(self, request: pb.PushRequest) -> PushAck:
        try:
            reply = self._call(self.stub.Push, request)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                trailers = dict(error.trailing_metadata() or ())
                expected = trailers.get("fedrecon-expected-seq")
                raise SequenceError(error.details(), int(expected) if expected else None) from error
            raise
        self.state.acknowledge(reply.seq)
        return PushAck(reply.seq, reply.version, reply.classes, reply.duplicate)

    def resume(self) -> PushAck | None:
        """Send again the push that was pending when the process stopped (same number); None if none."""
        if self.state.pending is None:
            return None
        request = pb.PushRequest.FromString(self.state.pending)
        try:
            return self._send_push(request)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:  # never applicable: drop it, keep the number
                log.warning("pending push %d refused (%s); dropped", request.seq, error.details())
                self.state.pending, self.state.pending_seq = None, 0
                self.state.save()
            raise

    def push(self, space: str, class_ids: Sequence[str], counts: Sequence[int] | np.ndarray, means: np.ndarray,
             dtype: str | None = None) -> PushAck:
        """Push per-class deltas (count, mean) for one space; returns after the server made them durable."""
        self.resume()
        deltas = codec.encode_deltas(class_ids, counts, means, dtype or self.dtype)
        request = pb.PushRequest(client_id=self.client_id, space=space, deltas=deltas)
        request.seq = self.state.last_seq + 1
        self.state.begin(request.SerializeToString())
        try:
            return self._send_push(request)
        except grpc.RpcError as error:
            if error.code() in NOT_APPLIED:  # refused outright: a re-run must not send it again as pending
                self.state.pending, self.state.pending_seq = None, 0
                self.state.save()
            raise

    def pull(self, space: str, since: int | None = None, dtype: str | None = None) -> Pulled:
        """Merged prototypes changed since `since` (default: the version this client last pulled)."""
        since = self.versions.get(space, 0) if since is None else since
        request = pb.PullRequest(space=space, since=since, dtype=codec.dtype_code(dtype or self.dtype))
        pages = [self._call(self.stub.Pull, request)]
        while pages[-1].next_page_token:  # follow the pages; the pull is current to the last one's version
            request.page_token = pages[-1].next_page_token
            pages.append(self._call(self.stub.Pull, request))
        result = pulled_from_reply(*pages)
        self.versions[space] = result.version
        return result

    def watch(self, space: str, since: int = 0, dtype: str | None = None) -> Iterator[Pulled]:
        """Stream changes of a space as they are merged (a server stream; cancel by closing the client)."""
        request = pb.WatchRequest(space=space, since=since, dtype=codec.dtype_code(dtype or self.dtype))
        pages: list[pb.PullReply] = []
        for reply in self.stub.Watch(request, metadata=self._metadata):
            pages.append(reply)
            if reply.next_page_token:  # one pass of changes arrives in pages; yield it whole
                continue
            result = pulled_from_reply(*pages)
            pages = []
            self.versions[space] = result.version
            yield result

    def info(self) -> dict:
        """Server version, store id, global version, spaces, limits."""
        reply = self._call(self.stub.Info, pb.InfoRequest())
        limits = reply.limits
        return {
            "server_version": reply.server_version, "store_id": reply.store_id, "version": reply.version,
            "clients": reply.clients,
            "spaces": [{"space": s.space, "dim": s.dim, "classes": s.classes, "examples": s.examples,
                        "version": s.version} for s in reply.spaces],
            "limits": {"max_classes_per_push": limits.max_classes_per_push,
                       "max_message_bytes": limits.max_message_bytes,
                       "max_class_id_bytes": limits.max_class_id_bytes, "max_dim": limits.max_dim},
        }

    def sync(self, memory: PrototypeMemory, space: str) -> tuple[PushAck | None, Pulled]:
        """Push the memory's pending deltas (if any), then pull what changed and apply it to the memory."""
        ack = None
        class_ids, counts, means = memory.pending()
        if class_ids:
            ack = self.push(space, class_ids, counts, means)
            memory.mark_pushed()
        pulled = self.pull(space, since=memory.global_version)
        memory.apply_pull(pulled.class_ids, pulled.counts, pulled.means, pulled.version)
        return ack, pulled
