"""The store is a `Merger` itself: a client's `Replica` syncs against a bare store in process, under Pull's rules."""

import numpy as np
import pytest

from fedrecon.client.replica import Replica
from fedrecon.proto.merger import Merger
from fedrecon.proto.payloads import Deltas
from fedrecon.server.errors import VersionAhead
from fedrecon.server.store import PrototypeStore


def _learned(replica: Replica, class_id: str, value: float, n: int = 2) -> Replica:
    replica.memory.add_examples([class_id] * n, np.full((n, 4), value))
    return replica


def test_the_store_is_a_merger() -> None:
    with PrototypeStore() as store:
        assert isinstance(store, Merger)


def test_replicas_sync_through_a_bare_store() -> None:
    with PrototypeStore() as store:
        alice, bob = _learned(Replica("alice", "s"), "a", 1.0), _learned(Replica("bob", "s"), "b", 3.0, n=4)
        first = alice.sync(store)
        assert [(ack.seq, ack.classes, ack.duplicate) for ack in first.acks] == [(1, 1, False)]
        synced = bob.sync(store)
        assert synced.pulled.version == store.version == 2 and synced.pulled.epoch == store.epoch
        assert sorted(bob.memory.global_table.class_ids) == ["a", "b"] and not len(bob.memory.local)
        assert alice.sync(store).pulled.class_ids == ["b"]  # incremental: only what changed since its version
        _learned(alice, "a", 2.0)
        assert [ack.seq for ack in alice.sync(store).acks] == [2]  # the replica numbers its pushes
        table = alice.memory.global_table  # (count, mean) as pulled: 2 x 1.0 and 2 x 2.0
        (row,) = table.rows(["a"], create=False)
        assert table.counts[row] == 4 and np.allclose(table.means()[row], 1.5)
        assert bob.memory.global_epoch == alice.memory.global_epoch == store.epoch


def test_a_pull_of_another_history_is_refused_as_over_grpc() -> None:
    """A `since` of an epoch the store does not hold, or one it never reached, is refused with VersionAhead (what
    Pull answers as FAILED_PRECONDITION, pull again from 0); the store's own epoch is served."""
    with PrototypeStore() as store, PrototypeStore() as other:
        for seq in (1, 2):
            store.push("a", seq, "s", Deltas([f"x{seq}"], np.ones(1, np.int64), np.ones((1, 4))))
            other.push("a", seq, "s", Deltas([f"x{seq}"], np.ones(1, np.int64), np.ones((1, 4))))
        replica = Replica("r", "s")
        replica.sync(other)  # its version 2 belongs to the other store's history
        with pytest.raises(VersionAhead, match="pull again with since=0"):
            replica.sync(store)
        with pytest.raises(VersionAhead, match="ahead of this store's version 2"):
            store.pull("s", since=3)
        assert store.pull("s", since=1, epoch=store.epoch).class_ids == ["x2"]
        assert store.pull("s", since=1).class_ids == ["x2"]  # no epoch named: only `since` is checked


def test_a_durable_replica_delivers_its_outbox_only_over_grpc_and_sends_nothing_otherwise() -> None:
    """A replica with a client state delivers its numbered outbox over a `GrpcMerger` (exactly once across restarts
    needs the gRPC protocol's reconciliation); handed a bare store it refuses in one line and keeps its deltas."""
    from fedrecon.client.state import ClientState

    with PrototypeStore() as store, ClientState(None, "c") as state:
        replica = _learned(Replica("c", "s", state=state), "a", 1.0)
        with pytest.raises(TypeError, match="over a GrpcMerger, not PrototypeStore"):
            replica.sync(store)
        assert store.version == 0 and replica.memory.pending().class_ids == ["a"] and state.all_pending == []
