"""A client's `Replica` of a federation's prototypes, and its one `sync`.

The replica owns what a client holds: its local table (un-pushed deltas) and the pulled global table with their
version and epoch (`PrototypeMemory`), and its numbered outbox (`Outbox`: the pending pushes of its durable
`ClientState`, delivered exactly once over a stateless `GrpcMerger`). `sync(merger)` pushes what is pending exactly
once, then pulls what changed since its version and applies it (persisted with a state). The CLI's `Learner`, the
experiments' simulated clients, the demo clients and the Flower ClientApp all sync this way, against any
`proto.merger.Merger`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrecon.client.grpc_merger import GrpcMerger
from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.outbox import Outbox
from fedrecon.client.state import ClientState
from fedrecon.proto.merger import Merger, next_seq
from fedrecon.proto.payloads import PushAck, Snapshot


@dataclass(frozen=True)
class Synced:
    """What one sync did: the acknowledged pushes, and the pull that followed."""

    acks: list[PushAck]
    pulled: Snapshot


class Replica:
    """One client's local and pulled prototypes of one space, its push numbers and (with a state) its outbox."""

    def __init__(self, client_id: str, space: str, memory: PrototypeMemory | None = None,
                 state: ClientState | None = None) -> None:
        self.client_id = client_id
        self.space = space
        self.state = state
        if memory is None:
            memory = state.load_memory(space) if state is not None else PrototypeMemory()
        self.memory = memory
        self._last_seq = 0  # the last acknowledged push number of a replica without a state
        self._outbox: Outbox | None = None

    @property
    def last_seq(self) -> int:
        """The number of this client's last acknowledged push."""
        return self.state.last_seq if self.state is not None else self._last_seq

    def sync(self, merger: Merger) -> Synced:
        """Push what is pending exactly once, then pull what changed since this replica's version."""
        acks = self.push(merger)
        return Synced(acks, self.pull(merger))

    def push(self, merger: Merger) -> list[PushAck]:
        """Push the memory's un-pushed deltas (and what a durable outbox holds) exactly once; the acks."""
        if self.state is not None:
            return self.outbox(merger).deliver(self.memory, self.space)
        deltas = self.memory.pending()
        if not deltas.class_ids:
            return []
        ack = merger.push(self.client_id, next_seq(self._last_seq), self.space, deltas)
        self._last_seq = ack.seq
        self.memory.mark_pushed()
        return [ack]

    def outbox(self, merger: Merger) -> Outbox:
        """This replica's numbered outbox in its state, delivered over `merger` (exactly once across restarts needs
        the gRPC protocol's reconciliation: a `GrpcMerger`)."""
        if self.state is None or not isinstance(merger, GrpcMerger):
            raise TypeError(f"a durable outbox is delivered over a GrpcMerger, not {type(merger).__name__}")
        if self._outbox is None or self._outbox.merger is not merger:
            self._outbox = Outbox(merger, self.state, self.client_id)
        return self._outbox

    def pull(self, merger: Merger) -> Snapshot:
        """Pull the classes merged since this replica's version into its global table (persisted with a state)."""
        memory = self.memory
        pulled = merger.pull(self.space, since=memory.global_version, epoch=memory.global_epoch)
        memory.apply_pull(pulled.class_ids, pulled.counts, pulled.means, pulled.version, pulled.epoch, pulled.reset)
        if self.state is not None:
            self.state.save_global(self.space, memory, pulled.class_ids, reset=pulled.reset)
        return pulled
