"""`ReconClient`: the client side of the Reconnaissance service.

Pushes are numbered 1, 2, 3... and kept in a durable `ClientState` bound to the server's store until
acknowledged; transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, rate limiting) are retried with the
same number within a deadline, a permanent refusal drops the push (a copy stays in the state), an auth
refusal un-sends it (nothing merged, nothing kept pending), and a store that numbers this client's pushes
otherwise is reconciled by content (`reconcile`). The first call checks the server is reachable within
`connect_timeout`. Pulls are incremental, and start again from 0 when the store's history changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np

from fedrecon.client import reconcile
from fedrecon.client.memory import PrototypeMemory, pull_into
from fedrecon.client.pages import decode_page, pulled_from_reply, snapshot_of  # noqa: F401 - re-exported
from fedrecon.client.reconcile import SequenceError  # noqa: F401 - re-exported
from fedrecon.client.state import ClientState
from fedrecon.proto import codec, trailers
from fedrecon.proto.channel import ChannelSecurity, open_channel
from fedrecon.proto.payloads import PushAck, Snapshot
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc

log = logging.getLogger("fedrecon.client")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Refusals of the push's content: sending it again can never succeed, so the pending push is dropped.
PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE}
# Refusals of the caller, not the push: nothing was merged, so the pending pushes are given back (not kept).
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
RECONCILE_ROUNDS = 8  # renumberings one send may need (each follows a store that moved on meanwhile)
PUSH_OVERHEAD_BYTES = 256  # client id, space, seq and framing of one push beside its classes


class ServerUnreachable(ConnectionError):
    """No server answered at the address within the connect timeout."""


class PushRefused(RuntimeError):
    """The server refused a push for good (its content can never be applied); a copy stays in the state."""


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


class AuthRefused(PushRefused, grpc.RpcError):
    """A push refused for authentication (UNAUTHENTICATED, PERMISSION_DENIED): nothing was merged, and nothing is
    kept pending: deltas from the local memory went back to it. Also a grpc.RpcError with the server's status."""

    def __init__(self, error: grpc.RpcError, details: str) -> None:
        super().__init__(f"{error.code().name}: {details}")
        self._code, self._details = error.code(), details

    def code(self) -> grpc.StatusCode:
        """The server's status."""
        return self._code

    def details(self) -> str:
        """The server's detail text, and what happened to the pending pushes."""
        return self._details

    def trailing_metadata(self) -> tuple:
        """No trailers are kept."""
        return ()


def pull_again(error: grpc.RpcError) -> bool:
    """Whether a Pull/Watch refusal asks for a full pull (trailer `fedrecon-pull-from`, or an older server's text)."""
    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return False
    return dict(error.trailing_metadata() or ()).get(trailers.PULL_FROM) == "0" or \
        "pull again with since=0" in (error.details() or "")


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
        self.epochs: dict[str, str] = {}  # the server epoch of each space's version
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
        if not self.seen_version:
            return self._metadata
        return (*self._metadata, (trailers.MIN_VERSION, str(self.seen_version)))

    def _saw(self, version: int) -> None:
        """Remember the highest store version this client has seen (an acknowledgement or a pull)."""
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
        """Bind the state to this server's store on first contact (StoreMismatch if it belongs to another); after a
        server start (a new epoch), check the store still holds this client's acknowledged pushes."""
        info = self.server_info()
        self.state.bind(info["store_id"], self.address)
        if info.get("epoch") and info["epoch"] != self.state.server_epoch:
            reconcile.check_store(self)
            self.state.server_epoch = info["epoch"]

    def call_push(self, request: pb.PushRequest) -> pb.PushReply:
        """One Push call with the usual retries of transient failures; the state is not touched."""
        return self._call(self.stub.Push, request)

    def _send_push(self, request: pb.PushRequest) -> PushAck:
        """Send the first pending push; acknowledge it, or drop it after a permanent refusal (PushRefused)."""
        try:
            reply = self.call_push(request)
        except grpc.RpcError as error:
            refusal = reconcile.sequence_error(error)
            if refusal is not None:
                raise refusal from error
            if is_permanent(error) and error.code() not in AUTH_CODES:
                self.state.drop_pending(error.code().name, error.details() or "")
                log.info("push %d refused for good (%s: %s); dropped, a copy is kept in the client state",
                         request.seq, error.code().name, error.details())
                self.state.renumber_pending(request.seq)  # none after it was merged
                raise PushRefused(f"push {request.seq} refused by {self.address}: {error.code().name}: "
                                  f"{error.details()} (dropped; a copy is kept in the client state)") from error
            raise
        self.state.acknowledge(reply.seq, reply.version)
        self._saw(reply.version)
        return PushAck(reply.seq, reply.version, reply.classes, reply.duplicate)

    def resume(self, memory: PrototypeMemory | None = None, space: str = "") -> PushAck | None:
        """Send again what was pending when the process stopped (same numbers); the last answer, None if none."""
        acks = self._send_pending(memory, space)
        return acks[-1] if acks else None

    def _send_pending(self, memory: PrototypeMemory | None = None, space: str = "") -> list[PushAck]:
        """Send every pending push in order: several on one PushStream call, then any left one at a time,
        reconciling with the store when it numbers this client's pushes otherwise (`reconcile`). An auth refusal
        un-sends them all: deltas taken from the local memory (`memory`, of `space`) go back to it."""
        self.bind()
        pending = self.state.all_pending
        if not pending:
            return []
        acks = self._stream_pending([pb.PushRequest.FromString(p.request) for p in pending]) if len(pending) > 1 \
            else []
        for _ in range(RECONCILE_ROUNDS):
            try:
                while (left := self.state.pending) is not None:  # none, or those the stream did not answer
                    acks.append(self._send_push(pb.PushRequest.FromString(left.request)))
                return acks
            except reconcile.SequenceError as error:
                acks.extend(reconcile.reconcile(self, error))
            except grpc.RpcError as error:
                if error.code() in AUTH_CODES:
                    raise self._unsend(error, memory, space) from error
                raise
        raise reconcile.SequenceError(f"the store at {self.address} kept renumbering client {self.client_id!r}'s "
                                      "pushes (is the client id in use by another client at the same time?)", None)

    def _unsend(self, error: grpc.RpcError, memory: PrototypeMemory | None, space: str) -> AuthRefused:
        """After an auth refusal: nothing was merged; give the pending pushes back (one transaction)."""
        pushes = len(self.state.all_pending)
        returned = self.state.return_pending(error.code().name, error.details() or "", space, memory)
        where = (f"{returned} of them back in the local memory" if returned == pushes else
                 f"{returned} back in the local memory, {pushes - returned} kept in the state's dropped pushes"
                 if returned else "kept in the state's dropped pushes")
        return AuthRefused(error, f"{error.details()} ({pushes} pushes not sent, {where}; run again with the right "
                                  "token and they are pushed once)")

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
                    self.state.acknowledge(reply.seq, reply.version)
                    self._saw(reply.version)
                    acks.append(PushAck(reply.seq, reply.version, reply.classes, reply.duplicate))
        except grpc.RpcError as error:
            log.info("push stream ended after %d of %d pushes (%s); sending the rest one at a time", len(acks),
                     len(requests), error.code().name)
        return acks

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
             dtype: str | None = None, source: str = "", again: bool = False) -> PushAck:
        """Push per-class deltas (count, mean) for one space; returns after the server made them durable.

        `source` names what the deltas were made from (e.g. a file's digest): a push of that source left pending
        by an earlier run is resumed, not made again, and one already acknowledged is answered from the history
        (duplicate = True) unless `again`."""
        resumed = source and any(p.source == source for p in self.state.all_pending)
        acks = self._send_pending()
        earlier = self.state.find_source(source) if source else None
        if earlier is not None and (resumed or not again):
            ack = next((a for a in acks if a.seq == earlier.seq), None) if resumed else None
            return ack or PushAck(earlier.seq, earlier.version, reconcile.classes_of(earlier), True)
        request = self._request(space, class_ids, counts, means, dtype)
        self.state.begin(request.seq, space, request.SerializeToString(), source=source)
        return self._send_pending()[-1]

    def push_many(self, space: str, pushes: Sequence[tuple[Sequence[str], Sequence[int] | np.ndarray, np.ndarray]],
                  dtype: str | None = None, memory: PrototypeMemory | None = None) -> list[PushAck]:
        """Push several deltas (class_ids, counts, means) as consecutive numbered pushes on one PushStream call.

        All are recorded as pending in one transaction first (with `memory`: the pushes' classes leave its local
        deltas in that transaction, and only once it commits in memory), so a failure or crash at any point loses
        nothing and doubles nothing: the next call resends them.
        """
        acks = self._send_pending(memory, space)
        first = self.state.last_seq + 1
        requests = [self._request(space, ids, counts, means, dtype, seq=first + i)
                    for i, (ids, counts, means) in enumerate(pushes)]
        if not requests:
            return acks
        records = [(r.seq, space, r.SerializeToString()) for r in requests]
        if memory is None:
            self.state.begin_all(records)
        else:
            rest = memory.without([c for ids, _, _ in pushes for c in ids])
            returned = [(r.seq, *memory.returned(list(ids))) for r, (ids, _, _) in zip(requests, pushes, strict=True)]
            self.state.begin_all(records, rest, returned)
            memory.local = rest.local
        return acks + self._send_pending(memory, space)

    def push_memory(self, memory: PrototypeMemory, space: str, dtype: str | None = None) -> list[PushAck]:
        """Push a memory's un-pushed deltas, in as many pushes as the server's limits need (`push_many`)."""
        acks = self._send_pending(memory, space)
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
        return acks + self.push_many(space, chunks, dtype, memory)

    def pull(self, space: str, since: int | None = None, dtype: str | None = None,
             epoch: str | None = None) -> Snapshot:
        """Merged prototypes changed since `since` (default: the version this client last pulled), `since` from
        `epoch` (default: that pull's). If the store's history no longer holds `since` (a server restored from a
        backup), everything is pulled again: the snapshot has `reset` set and replaces the caller's table."""
        if since is None:
            since, epoch = self.versions.get(space, 0), self.epochs.get(space, "")
        try:
            result = self._pull_pages(space, since, dtype, epoch or "")
        except grpc.RpcError as error:
            if not since or not pull_again(error):
                raise
            log.warning("pull since %d of space %s refused (%s); pulling everything again", since, space,
                        error.details())
            result = replace(self._pull_pages(space, 0, dtype, ""), reset=True)
        self.versions[space], self.epochs[space] = result.version, result.epoch
        self._saw(result.version)
        return result

    def _pull_pages(self, space: str, since: int, dtype: str | None, epoch: str) -> Snapshot:
        request = pb.PullRequest(space=space, since=since, dtype=codec.dtype_code(dtype or self.dtype), epoch=epoch)
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
        return snapshot_of(space, reply.version, pages, first_version, reply.epoch)

    def watch(self, space: str, since: int = 0, dtype: str | None = None, epoch: str = "") -> Iterator[Snapshot]:
        """Stream changes of a space as they are merged (a server stream; cancel by closing the client). A `since`
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
            self.versions[space], self.epochs[space] = result.version, result.epoch
            self._saw(result.version)
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
            "epoch": reply.epoch,
        }

    def sync(self, memory: PrototypeMemory, space: str) -> tuple[list[PushAck], Snapshot]:
        """Push the memory's pending deltas (if any), then pull what changed and apply it to the memory."""
        acks = self.push_memory(memory, space)
        return acks, pull_into(memory, lambda since: self.pull(space, since=since, epoch=memory.global_epoch))
