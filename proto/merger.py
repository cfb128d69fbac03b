"""The `Merger` seam: where a client's numbered pushes go and its incremental pulls come from.

Implemented in process by the store itself (`fedrecon.server.store.PrototypeStore`) and over the network by the
stateless gRPC client (`fedrecon.client.grpc_merger`); a client's `Replica` syncs against any of them. Both refuse a
pull whose `since` the store never reached or whose `epoch` it does not hold (the store with `VersionAhead`, gRPC
with FAILED_PRECONDITION); the gRPC client then pulls everything again. The numbering rule of
pushes (1, 2, 3... per client; a retry reuses its number) lives here once as `next_seq`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fedrecon.proto.payloads import Deltas, PushAck, Snapshot


def next_seq(last: int) -> int:
    """The number of a client's next push after its last acknowledged one `last` (0: none yet)."""
    return int(last) + 1


@runtime_checkable
class Merger(Protocol):
    """Merges numbered per-class deltas exactly once and answers incremental pulls."""

    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> PushAck:
        """Merge push `seq` of `client_id` (a retry of its last number answers as before); after it is durable."""
        ...

    def pull(self, space: str, since: int, epoch: str = "") -> Snapshot:
        """Merged (count, mean) of the classes of `space` changed after `since` (of `epoch`)."""
        ...
