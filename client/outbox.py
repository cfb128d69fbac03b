"""A client's numbered `Outbox`: exactly-once delivery of a durable, store-bound client state over a stateless
`GrpcMerger`.

Pushes are numbered 1, 2, 3... (`proto.merger.next_seq`) and kept in a durable `ClientState` bound to the
server's store until acknowledged; transient failures are retried by the merger with the same number, a permanent
refusal drops the push (a copy stays in the state), an auth refusal un-sends it (nothing merged, nothing kept
pending), and a store that numbers this client's pushes otherwise is reconciled by content (`reconcile`). A
client's `Replica` delivers through it; `ReconClient` offers the same pushes to library callers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from fedrecon.client import reconcile
from fedrecon.client.grpc_merger import AUTH_CODES, GrpcMerger, ack_of, is_permanent
from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.state import ClientState, PendingPush, request_digest
from fedrecon.proto import codec
from fedrecon.proto.merger import next_seq
from fedrecon.proto.payloads import Deltas, PushAck
from fedrecon.proto.v1 import recon_pb2 as pb

log = logging.getLogger("fedrecon.client")

RECONCILE_ROUNDS = 8  # renumberings one send may need (each follows a store that moved on meanwhile)
PUSH_OVERHEAD_BYTES = 256  # client id, space, seq and framing of one push beside its classes


class PushRefused(RuntimeError):
    """The server refused a push for good (its content can never be applied); a copy stays in the state."""


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


def push_size(client_id: str, space: str, class_ids: Sequence[str], dim: int, itemsize: int) -> int:
    """A close upper estimate of a push's serialized bytes (to keep each push under the server's limit)."""
    return PUSH_OVERHEAD_BYTES + len(client_id) + len(space) + sum(len(c.encode()) + 14 for c in class_ids) \
        + len(class_ids) * dim * itemsize


class Outbox:
    """The numbered pushes of one client id, recorded in its durable state, delivered exactly once over a merger."""

    def __init__(self, merger: GrpcMerger, state: ClientState, client_id: str) -> None:
        self.merger = merger
        self.state = state
        self.client_id = client_id

    @property
    def address(self) -> str:
        """The server's address (named in errors)."""
        return self.merger.address

    def bind(self) -> None:
        """Bind the state to this server's store on first contact (StoreMismatch if it belongs to another); after a
        server start (a new epoch), check the store still holds this client's acknowledged pushes."""
        info = self.merger.server_info()
        self.state.bind(info["store_id"], self.address)
        if info.get("epoch") and info["epoch"] != self.state.server_epoch:
            reconcile.check_store(self)
            self.state.server_epoch = info["epoch"]

    def _send_push(self, request: pb.PushRequest) -> PushAck:
        """Send the first pending push; acknowledge it, or drop it after a permanent refusal (PushRefused)."""
        try:
            reply = self.merger.send(request)
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
        return ack_of(reply)

    def resume(self, memory: PrototypeMemory | None = None, space: str = "") -> PushAck | None:
        """Send again what was pending when the process stopped (same numbers); the last answer, None if none."""
        self.bind()
        acks = self._send_pending(memory, space)
        return acks[-1] if acks else None

    def _send_pending(self, memory: PrototypeMemory | None = None, space: str = "",
                      fresh: dict[bytes, pb.PushRequest] | None = None) -> list[PushAck]:
        """Send every pending push in order: several on one PushStream call, then any left one at a time,
        reconciling with the store when it numbers this client's pushes otherwise (`reconcile`). An auth refusal
        un-sends them all: deltas taken from the local memory (`memory`, of `space`) go back to it. `fresh`: the
        requests just recorded, by their serialized bytes (not parsed back)."""
        fresh = fresh or {}

        def request(push: PendingPush) -> pb.PushRequest:
            return fresh.get(push.request) or pb.PushRequest.FromString(push.request)

        pending = self.state.all_pending
        if not pending:
            return []
        acks = self._stream_pending([request(p) for p in pending]) if len(pending) > 1 else []
        for _ in range(RECONCILE_ROUNDS):
            try:
                while (left := self.state.pending) is not None:  # none, or those the stream did not answer
                    acks.append(self._send_push(request(left)))
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
        acks = []
        try:
            for reply in self.merger.stream(requests, len(requests)):
                self.state.acknowledge(reply.seq, reply.version)
                acks.append(ack_of(reply))
        except grpc.RpcError as error:
            log.info("push stream ended after %d of %d pushes (%s); sending the rest one at a time", len(acks),
                     len(requests), error.code().name)
        return acks

    def _request(self, space: str, deltas: Deltas, dtype: str | None, seq: int | None = None) -> pb.PushRequest:
        number = next_seq(self.state.last_seq) if seq is None else seq
        request = self.merger.request(self.client_id, number, space, deltas, dtype)
        limit = int(self.merger.server_info()["limits"]["max_message_bytes"] or 0)
        if limit and request.ByteSize() > limit:
            raise PushRefused(f"a push of {len(deltas.class_ids)} classes is {request.ByteSize():,} bytes; the server "
                              f"at {self.address} accepts at most {limit:,} (push fewer classes at a time)")
        return request

    def push(self, space: str, deltas: Deltas, dtype: str | None = None, source: str = "", again: bool = False
             ) -> PushAck:
        """Push per-class deltas (count, mean) for one space; returns after the server made them durable.

        `source` names what the deltas were made from (e.g. a file's digest): a push of that source left pending
        by an earlier run is resumed, not made again, and one already acknowledged is answered from the history
        (duplicate = True) unless `again`."""
        resumed = source and any(p.source == source for p in self.state.all_pending)
        self.bind()
        acks = self._send_pending()
        earlier = self.state.find_source(source) if source else None
        if earlier is not None and (resumed or not again):
            ack = next((a for a in acks if a.seq == earlier.seq), None) if resumed else None
            return ack or PushAck(earlier.seq, earlier.version, reconcile.classes_of(earlier), True)
        request = self._request(space, deltas, dtype)
        serialized = request.SerializeToString()
        self.state.begin(request.seq, space, serialized, source=source, digest=request_digest(space, request))
        return self._send_pending(fresh={serialized: request})[-1]

    def push_many(self, space: str, pushes: Sequence[Deltas], dtype: str | None = None,
                  memory: PrototypeMemory | None = None) -> list[PushAck]:
        """Push several deltas as consecutive numbered pushes on one PushStream call.

        All are recorded as pending in one transaction first (with `memory`: the pushes' classes leave its local
        deltas in that transaction, and only once it commits in memory), so a failure or crash at any point loses
        nothing and doubles nothing: the next call resends them.
        """
        self.bind()
        acks = self._send_pending(memory, space)
        first = next_seq(self.state.last_seq)
        pushes = [Deltas(*push) for push in pushes]  # plain (class_ids, counts, means) tuples are taken too
        requests = [self._request(space, deltas, dtype, seq=first + i) for i, deltas in enumerate(pushes)]
        if not requests:
            return acks
        fresh = {r.SerializeToString(): r for r in requests}
        records = [(r.seq, space, serialized) for serialized, r in fresh.items()]
        digests = [request_digest(space, r) for r in fresh.values()]  # from the messages: nothing parsed back
        if memory is None:
            self.state.begin_all(records, digests=digests)
        else:
            rest = memory.without([c for deltas in pushes for c in deltas.class_ids])
            returned = [(r.seq, *memory.returned(list(deltas.class_ids)))
                        for r, deltas in zip(requests, pushes, strict=True)]
            self.state.begin_all(records, rest, returned, digests=digests)
            memory.local = rest.local
        return acks + self._send_pending(memory, space, fresh)

    def push_memory(self, memory: PrototypeMemory, space: str, dtype: str | None = None) -> list[PushAck]:
        """Push a memory's un-pushed deltas, in as many pushes as the server's limits need (`push_many`)."""
        class_ids, counts, means = memory.pending()
        limits = self.merger.server_info()["limits"]
        itemsize = codec.DTYPES[codec.dtype_code(dtype or self.merger.dtype)].itemsize
        budget = int(limits["max_message_bytes"] or 4 << 20) // 2
        per_push = max(1, int(limits["max_classes_per_push"] or len(class_ids) or 1))
        chunks, start = [], 0
        while start < len(class_ids):
            end = min(len(class_ids), start + per_push)
            while end - start > 1 and push_size(self.client_id, space, class_ids[start:end], means.shape[1],
                                                itemsize) > budget:
                end = start + (end - start) // 2
            chunks.append(Deltas(class_ids[start:end], counts[start:end], means[start:end]))
            start = end
        return self.push_many(space, chunks, dtype, memory)

    def deliver(self, memory: PrototypeMemory, space: str) -> list[PushAck]:
        """Send what was pending, then the memory's un-pushed deltas, exactly once."""
        return self.push_memory(memory, space)
