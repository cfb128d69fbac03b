"""`ReconClient`: the client side of the Reconnaissance service.

Pushes are numbered 1, 2, 3... and kept in a durable `ClientState` bound to the server's store until
acknowledged; transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, rate limiting) are retried with the
same number within a deadline, a permanent refusal drops the push (a copy stays in the state). The
first call checks the server is reachable within `connect_timeout`. Pulls are incremental.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from fedrecon.client.memory import PrototypeMemory, pull_into
from fedrecon.client.state import ClientState
from fedrecon.proto import codec
from fedrecon.proto.channel import ChannelSecurity, open_channel
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc

log = logging.getLogger("fedrecon.client")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Refusals of the push's content: sending it again can never succeed, so the pending push is dropped.
PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE}
RETRY_AFTER_KEY = "fedrecon-retry-after-ms"
MIN_VERSION_KEY = "fedrecon-min-version"  # a replica answers a pull only once it has applied what this client saw
PUSH_OVERHEAD_BYTES = 256  # client id, space, seq and framing of one push beside its classes


class ServerUnreachable(ConnectionError):
    """No server answered at the address within the connect timeout."""


class PushRefused(RuntimeError):
    """The server refused a push for good (its content can never be applied); a copy stays in the state."""


def retry_after(error: grpc.RpcError) -> float | None:
    """Seconds the server asks to wait before retrying (trailer `fedrecon-retry-after-ms`), if it sent one."""
    value = dict(error.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
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


class SequenceError(RuntimeError):
    """The server expects another sequence number (e.g. the state file was lost or belongs to another store)."""

    def __init__(self, message: str, expected: int | None) -> None:
        super().__init__(message)
        self.expected = expected


def decode_page(reply: pb.PullReply) -> Deltas:
    """One page's classes (count 0 rows mean a class was removed), means still in the wire dtype."""
    return codec.decode_deltas(reply.classes, allow_zero_counts=True, float64=False)


def snapshot_of(space: str, version: int, pages: Sequence[Deltas], first_version: int | None = None) -> Snapshot:
    """The pages of one pull as one snapshot: a later page overrides an earlier one for the same class (it
    changed while paging), so the result is current to the last page's `version`. A class only comes again if
    it changed, so when the first page had that version too (`first_version`), no class repeats."""
    class_ids = [c for p in pages for c in p.class_ids]
    counts = np.concatenate([p.counts for p in pages])
    means = np.concatenate([p.means for p in pages if len(p.class_ids)] or [pages[0].means], dtype=np.float64)
    if first_version != version and len(set(class_ids)) != len(class_ids):  # changed while paging: last row wins
        latest = {cid: i for i, cid in enumerate(class_ids)}
        keep = np.fromiter(latest.values(), dtype=np.int64, count=len(latest))
        class_ids, counts, means = list(latest), counts[keep], means[keep]
    return Snapshot(space, version, class_ids, counts, means)


def pulled_from_reply(reply: pb.PullReply, *more: pb.PullReply) -> Snapshot:
    """Decode a PullReply, or the pages of one pull in order (`snapshot_of`)."""
    return snapshot_of(reply.space, (more[-1] if more else reply).version,
                       [decode_page(r) for r in (reply, *more)], reply.version)


def push_size(client_id: str, space: str, class_ids: Sequence[str], dim: int, itemsize: int) -> int:
    """A close upper estimate of a push's serialized bytes (to keep each push under the server's limit)."""
    return PUSH_OVERHEAD_BYTES + len(client_id) + len(space) + sum(len(c.encode()) + 14 for c in class_ids) \
        + len(class_ids) * dim * itemsize


class ReconClient:
    """Push, pull, watch and info against one server; exactly-once pushes via a durable, store-bound state."""

    def __init__(
        self,
        address: str,
        client_id: str = "",
        *,
        state_path: str | Path | None = None,
        timeout: float = 10.0,
        retries: int = 8,
        backoff: float = 0.1,
        deadline: float | None = None,
        connect_timeout: float | None = 5.0,
        dtype: str = "float32",
        security: ChannelSecurity | None = None,
        state: ClientState | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.dtype = dtype
        self.state = state if state is not None else ClientState(state_path, client_id)
        self._owns_state = state is None
        self.versions: dict[str, int] = {}
        self._info: dict | None = None
        self._connected = False
        self.seen_version = 0  # the highest store version this client was answered (pushes and pulls, any replica)
        security = security or ChannelSecurity()
        self._metadata = security.metadata()
        self.channel = open_channel(address, security)
        self.stub = rpc.ReconnaissanceStub(self.channel)

    def close(self) -> None:
        """Close the channel (and the state, if this client opened it)."""
        self.channel.close()
        if self._owns_state:
            self.state.close()

    def __enter__(self) -> ReconClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        return (*self._metadata, (MIN_VERSION_KEY, str(self.seen_version))) if self.seen_version else self._metadata

    def _saw(self, version: int) -> None:
        self.seen_version = max(self.seen_version, version)

    def _call(self, method, request, retry: bool = True, metadata=None):  # noqa: ANN001, ANN202 - any unary method
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

    @property
    def store_id(self) -> str:
        """The server's store id (asked once per client)."""
        return self.server_info()["store_id"]

    def server_info(self) -> dict:
        """`info()`, asked once and remembered (store id and limits do not change while a server runs)."""
        if self._info is None:
            self._info = self.info()
        return self._info

    def bind(self) -> None:
        """Bind the state to this server's store on first contact; StoreMismatch if it belongs to another."""
        self.state.bind(self.store_id, self.address)

    def _send_push(self, request: pb.PushRequest) -> PushAck:
        try:
            reply = self._call(self.stub.Push, request)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                trailers = dict(error.trailing_metadata() or ())
                expected = trailers.get("fedrecon-expected-seq")
                raise SequenceError(error.details(), int(expected) if expected else None) from error
            if is_permanent(error):
                self.state.drop_pending(error.code().name, error.details() or "")
                log.info("push %d refused for good (%s: %s); dropped, a copy is kept in the client state",
                            request.seq, error.code().name, error.details())
                expected = dict(error.trailing_metadata() or ()).get("fedrecon-expected-seq")
                self._renumber_pending(int(expected) if expected else request.seq)
                hint = ""
                if error.code() == grpc.StatusCode.ALREADY_EXISTS:  # the store holds other content under this seq
                    hint = (" The store already holds other content under this number: was this client state "
                            "restored from a backup, or is the client id used elsewhere?")
                raise PushRefused(f"push {request.seq} refused by {self.address}: {error.code().name}: "
                                  f"{error.details()} (dropped; a copy is kept in the client state).{hint}") \
                    from error
            raise
        self.state.acknowledge(reply.seq)
        self._saw(reply.version)
        return PushAck(reply.seq, reply.version, reply.classes, reply.duplicate)

    def resume(self) -> PushAck | None:
        """Send again what was pending when the process stopped (same numbers); the last answer, None if none."""
        acks = self._send_pending()
        return acks[-1] if acks else None

    def _send_pending(self) -> list[PushAck]:
        """Send every pending push in order: several on one PushStream call, then any left one at a time."""
        pending = self.state.all_pending
        if not pending:
            return []
        self.bind()
        acks = self._stream_pending([pb.PushRequest.FromString(p.request) for p in pending]) if len(pending) > 1 \
            else []
        while (left := self.state.pending) is not None:  # none, or those the stream did not answer
            try:
                acks.append(self._send_push(pb.PushRequest.FromString(left.request)))
            except SequenceError as error:
                confirmed = self._confirm_merged(error.expected)
                if not confirmed:
                    raise
                acks.extend(confirmed)
        return acks

    def _confirm_merged(self, expected: int | None) -> list[PushAck]:
        """The store is ahead of this client's acknowledged pushes (a stream's answers were lost): if the
        store's last push is this client's pending push of that number (resent, answered as a duplicate),
        the pending pushes before it were merged too (a store merges one client's pushes in order).
        Returns their acknowledgements (those before it carry its version), or [] if that is not so."""
        pending = {p.seq: p for p in self.state.all_pending}
        last = (expected or 0) - 1
        if last not in pending or min(pending) >= last:
            return []
        ack = self._send_push(pb.PushRequest.FromString(pending[last].request))
        if not ack.duplicate:
            return [ack]
        before = [pending[seq] for seq in sorted(pending) if seq < last]
        for push in before:
            self.state.acknowledge(push.seq)
        log.info("pushes %d..%d were merged but their answers lost; confirmed by push %d", before[0].seq,
                 before[-1].seq, last)
        return [PushAck(p.seq, ack.version, len(pb.PushRequest.FromString(p.request).deltas.class_ids), True)
                for p in before] + [ack]

    def _stream_pending(self, requests: list[pb.PushRequest]) -> list[PushAck]:
        """Pushes on one PushStream call, each acknowledged in the state as its answer comes.

        Whatever ends the call early (a refusal, a lost connection, an old server without PushStream) leaves
        the rest pending, and `_send_pending` sends them one at a time with the unary rules and retries.
        """
        self._connect()
        acks = []
        try:
            for message in self.stub.PushStream(iter(requests), timeout=self.timeout * max(1, len(requests)),
                                                metadata=self._metadata):
                for reply in message.replies:
                    self.state.acknowledge(reply.seq)
                    self._saw(reply.version)
                    acks.append(PushAck(reply.seq, reply.version, reply.classes, reply.duplicate))
        except grpc.RpcError as error:
            log.info("push stream ended after %d of %d pushes (%s); sending the rest one at a time", len(acks),
                     len(requests), error.code().name)
        return acks

    def _renumber_pending(self, first: int) -> None:
        """Number the pushes still pending from `first` on: after a refused push none of them was merged (a
        push is only merged after the one before it, and a stream merges nothing after a refusal)."""
        rest = self.state.all_pending
        renumbered = []
        for i, push in enumerate(rest):
            request = pb.PushRequest.FromString(push.request)
            request.seq = first + i
            renumbered.append((request.seq, push.space, request.SerializeToString()))
        if renumbered:
            self.state.replace_pending(renumbered)
            log.info("%d pending pushes renumbered from %d", len(renumbered), first)

    def _request(self, space: str, class_ids: Sequence[str], counts: Sequence[int] | np.ndarray, means: np.ndarray,
                 dtype: str | None, seq: int | None = None) -> pb.PushRequest:
        deltas = codec.encode_deltas(class_ids, counts, means, dtype or self.dtype)
        request = pb.PushRequest(client_id=self.client_id, space=space, deltas=deltas)
        request.seq = self.state.last_seq + 1 if seq is None else seq
        limit = int(self.server_info()["limits"]["max_message_bytes"] or 0)
        if limit and request.ByteSize() > limit:
            raise PushRefused(f"a push of {len(class_ids)} classes is {request.ByteSize():,} bytes; the server at "
                              f"{self.address} accepts at most {limit:,} (push fewer classes at a time)")
        return request

    def push(self, space: str, class_ids: Sequence[str], counts: Sequence[int] | np.ndarray, means: np.ndarray,
             dtype: str | None = None) -> PushAck:
        """Push per-class deltas (count, mean) for one space; returns after the server made them durable."""
        self.resume()
        self.bind()
        request = self._request(space, class_ids, counts, means, dtype)
        self.state.begin(request.seq, space, request.SerializeToString())
        return self._send_push(request)

    def push_many(self, space: str, pushes: Sequence[tuple[Sequence[str], Sequence[int] | np.ndarray, np.ndarray]],
                  dtype: str | None = None, memory: PrototypeMemory | None = None) -> list[PushAck]:
        """Push several deltas (class_ids, counts, means) as consecutive numbered pushes on one PushStream call.

        All are recorded as pending in one transaction first (with `memory`: together with its remaining
        local deltas), so a crash at any point loses nothing and doubles nothing: the next call resends them.
        """
        acks = self._send_pending()
        self.bind()
        first = self.state.last_seq + 1
        requests = [self._request(space, ids, counts, means, dtype, seq=first + i)
                    for i, (ids, counts, means) in enumerate(pushes)]
        if requests:
            self.state.begin_all([(r.seq, space, r.SerializeToString()) for r in requests], memory)
            acks.extend(self._send_pending())
        return acks

    def push_memory(self, memory: PrototypeMemory, space: str, dtype: str | None = None) -> list[PushAck]:
        """Push a memory's un-pushed deltas, in as many pushes as the server's limits need (`push_many`)."""
        acks = self._send_pending()
        self.bind()
        class_ids, counts, means = memory.pending()
        limits = self.server_info()["limits"]
        itemsize = codec.DTYPES[codec.dtype_code(dtype or self.dtype)].itemsize
        budget = int(limits["max_message_bytes"] or 4 << 20) // 2
        per_push = max(1, int(limits["max_classes_per_push"] or len(class_ids) or 1))
        chunks, start = [], 0
        while start < len(class_ids):
            end = min(len(class_ids), start + per_push)
            while end - start > 1 and push_size(self.client_id, space, class_ids[start:end], means.shape[1],
                                                itemsize) > budget:
                end = start + (end - start) // 2
            chunks.append((class_ids[start:end], counts[start:end], means[start:end]))
            start = end
        memory.mark_pushed(class_ids)
        return acks + self.push_many(space, chunks, dtype, memory)

    def pull(self, space: str, since: int | None = None, dtype: str | None = None) -> Snapshot:
        """Merged prototypes changed since `since` (default: the version this client last pulled)."""
        since = self.versions.get(space, 0) if since is None else since
        request = pb.PullRequest(space=space, since=since, dtype=codec.dtype_code(dtype or self.dtype))
        reply, pages = self._call(self.stub.Pull, request, metadata=self._read_metadata()), []
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
                reply = self._call(self.stub.Pull, request)
        result = snapshot_of(space, reply.version, pages, first_version)
        self.versions[space] = result.version
        self._saw(result.version)
        return result

    def watch(self, space: str, since: int = 0, dtype: str | None = None) -> Iterator[Snapshot]:
        """Stream changes of a space as they are merged (a server stream; cancel by closing the client)."""
        request = pb.WatchRequest(space=space, since=since, dtype=codec.dtype_code(dtype or self.dtype))
        pages: list[pb.PullReply] = []
        for reply in self.stub.Watch(request, metadata=self._read_metadata()):
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
                       "max_class_id_bytes": limits.max_class_id_bytes, "max_dim": limits.max_dim,
                       "max_stream_window": limits.max_stream_window},
        }

    def sync(self, memory: PrototypeMemory, space: str) -> tuple[list[PushAck], Snapshot]:
        """Push the memory's pending deltas (if any), then pull what changed and apply it to the memory."""
        acks = self.push_memory(memory, space)
        return acks, pull_into(memory, lambda since: self.pull(space, since=since))
