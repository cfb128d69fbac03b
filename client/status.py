"""`fedrecon client status`: what a client's state holds, per space and class, read from the state file alone.

Columns: `learned` (distinct images this client learned, by content hash), `local` (examples not yet pushed),
`pending` (examples in pushes recorded but not acknowledged), `merged` (the count in the last pulled global
table: every client's examples) and `version` (the store version of that pull).
"""

from __future__ import annotations

from typing import Any

from fedrecon.client.state import ClientState
from fedrecon.proto import codec
from fedrecon.proto.v1 import recon_pb2 as pb

COLUMNS = ("space", "class", "learned", "local", "pending", "merged", "version")


def pending_counts(state: ClientState) -> dict[tuple[str, str], int]:
    """(space, class) -> examples in pushes recorded but not yet acknowledged."""
    out: dict[tuple[str, str], int] = {}
    for push in state.all_pending:
        deltas = codec.decode_deltas(pb.PushRequest.FromString(push.request).deltas)
        for cid, n in zip(deltas.class_ids, deltas.counts.tolist(), strict=True):
            out[(push.space, cid)] = out.get((push.space, cid), 0) + int(n)
    return out


def status_rows(state: ClientState) -> list[dict[str, Any]]:
    """One row per (space, class) the state knows: learned, local, pending, merged counts and the pull version."""
    pending = pending_counts(state)
    spaces = sorted(set(state.classes_per_space()) | set(state.learned_spaces()) | {s for s, _ in pending})
    rows = []
    for space in spaces:
        memory = state.load_memory(space)
        local = {memory.local.class_ids[r]: int(memory.local.counts[r]) for r in memory.local.live_rows().tolist()}
        merged = {memory.global_table.class_ids[r]: int(memory.global_table.counts[r])
                  for r in memory.global_table.live_rows().tolist()}
        learned = state.learned_per_class(space)
        names = sorted(set(local) | set(merged) | set(learned) | {c for s, c in pending if s == space})
        rows += [{"space": space, "class": c, "learned": learned.get(c, 0), "local": local.get(c, 0),
                  "pending": pending.get((space, c), 0), "merged": merged.get(c, 0),
                  "version": memory.global_version} for c in names]
    return rows


def summary(state: ClientState) -> dict[str, Any]:
    """The state as JSON-ready data: client, bound store, last acknowledged push and the rows."""
    return {"client_id": state.client_id, "store_id": state.store_id, "last_seq": state.last_seq,
            "pending_pushes": len(state.all_pending), "classes": status_rows(state)}


def table(data: dict[str, Any]) -> str:
    """The summary as a plain-text table a person reads (class names printed as they are)."""
    head = (f"client {data['client_id']}  store {data['store_id'] or '(not bound yet)'}  last acknowledged push "
            f"{data['last_seq']}  pending pushes {data['pending_pushes']}")
    if not data["classes"]:
        return head + "\nno classes yet (fedrecon client learn ...)"
    cells = [[str(r[c]) for c in COLUMNS] for r in data["classes"]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [list(COLUMNS), *cells]]
    return "\n".join([head, *lines])
