"""Staging a batch: each request checked against the state plus the batch so far, and its operation recorded.

This is where exactly-once is decided (a retry of the last seq gets its first answer; a gap or other content
under a used seq is refused), and where the checks that depend on the state run: the dim of a space, the
space's example bound and the class quotas. Nothing is written or applied here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from fedrecon.proto.limits import MAX_SPACE_EXAMPLES, Limits
from fedrecon.proto.payloads import Deltas, PushAck
from fedrecon.proto.validate import check_text
from fedrecon.server.durable import Operation
from fedrecon.server.errors import (
    ClientRecord,
    EarlierPushRefused,
    InvalidPush,
    QuotaExceeded,
    SeqReused,
    SequenceGap,
    StoreError,
    UnknownClient,
    with_digest,
)
from fedrecon.server.pending import Pending
from fedrecon.server.tables import Tables


@dataclass
class Stage:
    """What a batch would change, validated before anything is written or applied."""

    version: int
    ops: list[Operation] = field(default_factory=list)
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    new_spaces: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)  # examples the batch adds per space (for the bound)
    pushes: dict[str, Pending] = field(default_factory=dict)  # each client's last push staged so far
    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (client or "", space): rows it may add


def stage_all(batch: list[Pending], tables: Tables, limits: Limits) -> tuple[Stage, list[Pending]]:
    """Stage a batch's requests against `tables`; also returns those whose answers need the commit."""
    stage = Stage(tables.version)
    staged: list[Pending] = []
    for request in batch:
        if request.error is not None:  # refused by the content checks
            continue
        before = len(stage.ops)
        try:
            request.result = stage_one(request, stage, tables, limits)
        except StoreError as error:
            request.error = error
        if len(stage.ops) > before or (request.result is not None and request.client_id in stage.clients):
            staged.append(request)  # its answer stands or falls with this commit (a retry: its original's)
    _keep_digests(stage)
    return stage, staged


def _last_digest(client_id: str, record: ClientRecord, stage: Stage) -> str:
    """The content digest of the client's last merged push: staged in this batch, or in its record."""
    earlier = stage.pushes.get(client_id)
    return earlier.content_digest() if earlier is not None else record.last_digest


def _stage_revoke(request: Pending, record: ClientRecord, stage: Stage, tables: Tables) -> PushAck:
    """Record the revocation of a client that has contributions."""
    if request.client_id not in tables.contributions and request.client_id not in stage.clients:
        raise UnknownClient(f"client {request.client_id!r} has no contributions")
    stage.version += 1
    nothing = Deltas([], np.zeros(0, np.int64), np.zeros((0, 0)))
    stage.ops.append(Operation(stage.version, "revoke", request.client_id, "", record.last_seq, nothing,
                               request.actor, time.time()))
    return PushAck(record.last_seq, stage.version, 0)


def stage_one(request: Pending, stage: Stage, tables: Tables, limits: Limits) -> PushAck:
    """Check one request against the state plus the batch so far; record its operation."""
    check_text("client_id", request.client_id, limits, InvalidPush)
    record = stage.clients.get(request.client_id) or tables.clients.get(request.client_id) or ClientRecord()
    if request.kind == "revoke":
        return _stage_revoke(request, record, stage, tables)
    check_text("space", request.space, limits, InvalidPush)
    if request.seq < 1:
        raise InvalidPush("seq must start at 1")
    retry = record.last_seq > 0 and request.seq == record.last_seq
    if request.after is not None and request.after.error is not None:
        raise with_digest(EarlierPushRefused(request.client_id, request.seq, record.last_seq + 1),
                          _last_digest(request.client_id, record, stage))
    if not retry and request.seq != record.last_seq + 1:
        raise with_digest(SequenceGap(request.client_id, request.seq, record.last_seq + 1),
                          _last_digest(request.client_id, record, stage))
    if retry:  # the first answer if it is the same push; other content under a used seq is refused
        stored = _last_digest(request.client_id, record, stage)
        if stored and stored != request.content_digest():
            raise with_digest(SeqReused(request.client_id, request.seq, record.last_seq + 1), stored)
        return PushAck(request.seq, record.last_version, record.last_classes, duplicate=True)
    _check_space(request, stage, tables, limits)
    assert request.deltas is not None
    classes = len(request.deltas.class_ids)
    stage.version += 1
    stage.ops.append(Operation(stage.version, "push", request.client_id, request.space, request.seq, request.deltas,
                               at=time.time(), packed=request.packed, sums=request.sums))
    stage.clients[request.client_id] = ClientRecord(request.seq, stage.version, classes)
    stage.pushes[request.client_id] = request
    return PushAck(request.seq, stage.version, classes)


def _keep_digests(stage: Stage) -> None:
    """Give each client's last push of the batch its digest: only the last is kept in the client's record
    (a retry can only repeat the last seq), so a batch hashes one push per client, not every push."""
    last = {op.client_id: i for i, op in enumerate(stage.ops) if op.kind == "push"}
    for i in last.values():
        op = stage.ops[i]
        stage.ops[i] = replace(op, digest=stage.pushes[op.client_id].content_digest())


def _check_space(request: Pending, stage: Stage, tables: Tables, limits: Limits) -> None:
    """The checks that depend on the state: the space's example bound, its dim, and the class quotas."""
    assert request.deltas is not None
    adds, dim = int(request.deltas.counts.sum()), request.deltas.dim
    held = tables.examples.get(request.space, 0)
    added = stage.added.get(request.space, 0) + adds
    if held + added > MAX_SPACE_EXAMPLES:
        raise InvalidPush(f"space {request.space!r} would hold more than {MAX_SPACE_EXAMPLES} examples "
                          f"(it holds {held}); this push adds {adds}")
    known = tables.dims.get(request.space) or stage.new_spaces.get(request.space)
    if known is None:
        stage.new_spaces[request.space] = dim
    elif known != dim:
        raise InvalidPush(f"space {request.space!r} has dim {known}; this push has dim {dim}")
    stage.added[request.space] = added
    _check_quota(stage, tables, "", request, limits.max_space_classes, f"space {request.space!r}")
    _check_quota(stage, tables, request.client_id, request, limits.max_client_classes,
                 f"client {request.client_id!r} in space {request.space!r}")


def _check_quota(stage: Stage, tables: Tables, client_id: str, request: Pending, limit: int, what: str) -> None:
    """Refuse a push that would take a table (the space's, or a client's in it) past `limit` classes
    (QuotaExceeded). Fast while far from it: the batch's pushes count as all new until it is near."""
    if not limit:
        return
    assert request.deltas is not None
    class_ids = request.deltas.class_ids
    table = (tables.contributions.get(client_id, {}) if client_id else tables.spaces).get(request.space)
    held, key = len(table) if table is not None else 0, (client_id, request.space)
    staged = stage.rows.get(key, 0)
    if held + staged + len(class_ids) > limit:
        new = len(class_ids) if table is None else int((table.rows(class_ids, create=False) < 0).sum())
        if held + staged + new > limit:
            raise QuotaExceeded(f"{what} holds {held} classes; this push would add {new} (quota {limit})")
    stage.rows[key] = staged + len(class_ids)

