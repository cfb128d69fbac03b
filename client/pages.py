"""Pull replies as snapshots: a pull's pages (or a watch's pass of changes) decoded into one `Snapshot`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas, Snapshot
from fedrecon.proto.v1 import recon_pb2 as pb


def decode_page(reply: pb.PullReply) -> Deltas:
    """One page's classes (count 0 rows mean a class was removed), means still in the wire dtype."""
    return codec.decode_deltas(reply.classes, allow_zero_counts=True, float64=False)


def snapshot_of(space: str, version: int, pages: Sequence[Deltas], first_version: int | None = None,
                epoch: str = "") -> Snapshot:
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
    return Snapshot(space, version, class_ids, counts, means, epoch=epoch)


def pulled_from_reply(reply: pb.PullReply, *more: pb.PullReply) -> Snapshot:
    """Decode a PullReply, or the pages of one pull in order (`snapshot_of`)."""
    last = more[-1] if more else reply
    return snapshot_of(reply.space, last.version, [decode_page(r) for r in (reply, *more)], reply.version, last.epoch)
