"""Reconciling a client's pushes with a store whose record of them differs from the client's state.

The store tells a refused push's client its last merged seq and that push's content digest (trailers
`fedrecon-expected-seq`, `fedrecon-last-digest`; `fedrecon.proto.digest` computes the same digest on both sides).
The client compares by content, never by guessing:
- store ahead (this state was restored from a backup, deleted, or its answers were lost): a pending push whose
  content is the store's last push was merged, with every pending push before it (a store merges one client's
  pushes in order); the rest are numbered after the store's last push and sent;
- store behind (the store was restored from a backup): the client sends again, with the same numbers and
  content, the acknowledged pushes (kept in its history) that the store lacks.
A server start changes the store's epoch (`Info.epoch`); a client that sees a new one re-sends its last
acknowledged push once (a retry, answered as a duplicate when the store still holds it) to find out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from fedrecon.client.state import PendingPush, request_digest
from fedrecon.proto import trailers
from fedrecon.proto.digest import DIGEST_PREFIX
from fedrecon.proto.payloads import PushAck
from fedrecon.proto.v1 import recon_pb2 as pb

if TYPE_CHECKING:
    from fedrecon.client.outbox import Outbox

log = logging.getLogger("fedrecon.client")

SEQ_CODES = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS}


class SequenceError(RuntimeError):
    """The store expects another sequence number and this state cannot tell how its pushes relate to the store's."""

    def __init__(self, message: str, expected: int | None, digest: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.digest = digest


def sequence_error(error: grpc.RpcError) -> SequenceError | None:
    """The seq refusal in a gRPC error (trailers: the expected seq, the digest of the last merged push), if one."""
    metadata = dict(error.trailing_metadata() or ())
    expected = metadata.get(trailers.EXPECTED_SEQ)
    if error.code() not in SEQ_CODES or not expected:
        return None
    digest = metadata.get(trailers.LAST_DIGEST, "")
    return SequenceError(error.details() or "", int(expected), digest if digest.startswith(DIGEST_PREFIX) else "")


def classes_of(push: PendingPush) -> int:
    """How many classes a recorded push holds."""
    return len(pb.PushRequest.FromString(push.request).deltas.class_ids)


def reconcile(outbox: Outbox, error: SequenceError) -> list[PushAck]:
    """Bring the state in line with a store that refused its first pending push; the acks of pushes found merged.

    Afterwards the pending pushes are numbered so that the next send can succeed; raises `error` (with a message
    that says what is pending) when the store's record cannot be related to this state's."""
    state, last = outbox.state, (error.expected or 1) - 1
    acked, pending = state.last_seq, state.all_pending
    if last < acked:
        return _store_behind(outbox, last, error)
    if last == acked:
        if pending and pending[0].seq != last + 1:
            state.renumber_pending(last + 1)
            return []
        raise error
    if error.digest:
        merged = [i for i, push in enumerate(pending)
                  if (push.digest or request_digest(push.space, push.request)) == error.digest]
        if merged:  # equal content twice: the one under the store's number, else the later one
            at = next((i for i in merged if pending[i].seq == last), merged[-1])
            # numbered as the store numbers them (answers lost, or a state restored with its pending pushes):
            # the ones before it went first; else only the push whose content the store has is known merged
            aligned = pending[at].seq == last and pending[0].seq == acked + 1
            return _confirm(outbox, pending[:at + 1] if aligned else [pending[at]], last)
    elif confirmed := _confirm_by_retry(outbox, last):
        return confirmed
    log.warning("the store holds pushes %d..%d of client %r that this state does not know (restored from a backup, "
                "deleted, or the id used elsewhere); none of its %d pending pushes is the store's last, so they are "
                "numbered from %d", acked + 1, last, outbox.client_id, len(pending), last + 1)
    state.adopt(last)
    return []


def _confirm(outbox: Outbox, merged: list[PendingPush], last: int) -> list[PushAck]:
    """Pending pushes found merged (the last of them is the store's push `last`): ask for its stored answer (a retry
    of `last` with that content), acknowledge them as `last - k + 1 .. last`, number the rest after `last`."""
    request = pb.PushRequest.FromString(merged[-1].request)
    request.seq = last
    reply = outbox.merger.send(request)
    if not reply.duplicate:  # the store moved on meanwhile: it merged this content again under `last`
        log.warning("push %d of client %r was merged again by a store that moved on", last, outbox.client_id)
    first = last - len(merged) + 1
    for i, push in enumerate(merged):
        outbox.state.acknowledge(push.seq, reply.version, merged_as=first + i)
    log.info("pushes %d..%d were already merged (the store's last push has their content); confirmed", first, last)
    outbox.state.renumber_pending(last + 1)
    return [PushAck(first + i, reply.version, classes_of(p), True) for i, p in enumerate(merged)]


def _confirm_by_retry(outbox: Outbox, last: int) -> list[PushAck]:
    """Without a digest (an older server): if the pending push numbered `last` is answered as a retry, it and the
    pending pushes before it were merged (a stream's answers were lost); [] if that is not so."""
    pending = {p.seq: p for p in outbox.state.all_pending}
    if last not in pending or min(pending) >= last:
        return []
    try:
        reply = outbox.merger.send(pb.PushRequest.FromString(pending[last].request))
    except grpc.RpcError:
        return []
    merged = [pending[seq] for seq in sorted(pending) if seq <= last]
    for push in merged:
        outbox.state.acknowledge(push.seq, reply.version)
    log.info("pushes %d..%d were merged but their answers lost; confirmed by push %d", merged[0].seq, last, last)
    return [PushAck(p.seq, reply.version, classes_of(p), p.seq != last or reply.duplicate) for p in merged]


def _store_behind(outbox: Outbox, last: int, error: SequenceError) -> list[PushAck]:
    """The store's last push of this client is older than this state's last acknowledged one: it lost pushes
    (restored from a backup). Put the acknowledged pushes it lacks back in front of the pending ones (same
    numbers, same content) so they are sent again; adopt its numbering if this state keeps no copy of them."""
    state, acked = outbox.state, outbox.state.last_seq
    kept = state.pushed(last) if last else None
    if kept is not None and error.digest and kept.digest and kept.digest != error.digest:
        raise SequenceError(f"the store's push {last} of client {outbox.client_id!r} is not the one this state "
                            "recorded under that number: the client id is used by another client state, or the store "
                            "is not the one this state was used with; nothing was sent", error.expected, error.digest)
    lost = state.history(last + 1)
    if [p.seq for p in lost] != list(range(last + 1, acked + 1)):
        log.error("the store lost pushes %d..%d of client %r (restored from a backup?) and this state keeps no copy "
                  "of them (written by an older fedrecon): they cannot be sent again; numbering from %d",
                  last + 1, acked, outbox.client_id, last + 1)
        state.adopt(last)
        return []
    log.warning("the store lost pushes %d..%d of client %r (restored from a backup?); sending them again",
                last + 1, acked, outbox.client_id)
    state.reopen(last + 1)
    return []


def check_store(outbox: Outbox) -> None:
    """After a server start (a new epoch): re-send the last acknowledged push, a retry the store answers as a
    duplicate if it still holds it; if it lost it (or more), put the lost pushes back as pending."""
    state = outbox.state
    kept = state.pushed(state.last_seq) if state.last_seq else None
    if kept is None:
        return
    try:
        reply = outbox.merger.send(pb.PushRequest.FromString(kept.request))
    except grpc.RpcError as rpc_error:
        refusal = sequence_error(rpc_error)
        if refusal is None:
            raise
        last = (refusal.expected or 1) - 1
        if last < state.last_seq:
            _store_behind(outbox, last, refusal)
        elif last == state.last_seq:
            log.error("the store holds other content than this state under push %d of client %r", last,
                      outbox.client_id)
        return  # the store is ahead: the next push reconciles by content
    if not reply.duplicate:
        log.warning("the store had lost push %d of client %r (restored from a backup?); sent again", kept.seq,
                    outbox.client_id)
        state.record_version(kept.seq, reply.version)
