"""PrototypeAveraging against a scripted grid (no Flower processes): lost nodes, SuperLink-made error replies,
missing replies, min-nodes, and a rerun on the same durable store that must not merge a mission twice."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import flwr  # noqa: F401 - required
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedrecon.proto.flower_records import Assignment, prototypes_record
from fedrecon.server.flower import PrototypeAveraging, TooFewNodes
from fedrecon.server.flower_plan import plan_missions
from fedrecon.server.store import PrototypeStore

SPACE = "conv4-test"
NODES = [101, 202, 303]


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """Messages are stamped with the ServerApp's run and node id; set them as a ServerApp process would."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


class ScriptedGrid:
    """Answers each message like a ClientApp would, unless `fate(round, kind, node)` says 'error' or 'silent'."""

    def __init__(self, fate: Callable[[int, str, int], str] = lambda r, k, n: "ok") -> None:
        self.fate = fate
        self.connected = list(NODES)
        self.received: list[tuple[int, str, int, int]] = []  # (round, kind, node, since)

    def get_node_ids(self) -> list[int]:
        return list(self.connected)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # what the grid does on push
            config = msg.content["config"]
            node, rnd, kind = msg.metadata.dst_node_id, int(config["server-round"]), msg.metadata.message_type
            self.received.append((rnd, kind, node, int(config["since"])))
            fate = self.fate(rnd, kind, node)
            if fate == "silent":
                continue
            if fate == "error":  # made by the SuperLink for a node that went away: its src_node_id is 1
                reply = Message(Error(code=0, reason="node unavailable"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = 1
            else:
                reply = Message(self._content(msg, kind), reply_to=msg)
            replies.append(reply)
        return replies

    @staticmethod
    def _content(msg: Message, kind: str) -> RecordDict:
        config = msg.content["config"]
        out = {"client": int(config["client"]), "space": SPACE}
        if kind == MessageType.TRAIN:
            mission = Assignment.from_config(config, "mission")
            means = np.ones((len(mission.classes), 4)) * int(config["client"])
            out["class-ids"] = list(mission.classes)
            return RecordDict({"config": ConfigRecord(out),
                               "prototypes": prototypes_record(np.full(len(mission.classes), 3), means, "float32")})
        queries = sum(len(q) for q in Assignment.from_config(config, "eval").images)
        return RecordDict({"config": ConfigRecord(out), "metrics": MetricRecord({"correct": queries,
                                                                                 "queries": queries})})


def plan():
    ids = [f"c{i}" for i in range(30)]
    return plan_missions(ids, [6] * 30, clients=3, rounds=3, ways=2, shots=3, queries=2, seed=0)


def run(store: PrototypeStore, grid: ScriptedGrid, min_nodes: int = 1) -> PrototypeAveraging:
    strategy = PrototypeAveraging(store, plan(), SPACE, min_nodes=min_nodes)
    strategy.start(grid, ArrayRecord(), num_rounds=3, timeout=1.0)
    return strategy


def test_error_replies_and_silence_lose_that_node_only() -> None:
    # node 303 answers round 1, fails in round 2 (error made by the SuperLink), says nothing in round 3
    fate = {2: "error", 3: "silent"}
    grid = ScriptedGrid(lambda r, k, n: fate.get(r, "ok") if n == 303 else "ok")
    with PrototypeStore() as store:
        strategy = run(store, grid)
        rounds = strategy.report()
    assert [r["lost"] for r in rounds] == [[], [2], [2]]
    assert [r["merged_classes"] for r in rounds] == [6, 4, 4]
    assert [r["classes_seen"] for r in rounds] == [6, 10, 14]  # lost missions are not scored
    assert all(r["accuracy"] == 1.0 for r in rounds)
    # the failed client's state is unknown: its next message carries the full table (since 0), by its own node
    since_303 = [s for r, k, n, s in grid.received if n == 303]  # train, evaluate per round
    assert since_303[2] > 0 and since_303[3] == 0


def test_a_disconnected_node_is_skipped_and_min_nodes_ends_the_run() -> None:
    grid = ScriptedGrid()
    with PrototypeStore() as store:
        strategy = PrototypeAveraging(store, plan(), SPACE)
        strategy.start(grid, ArrayRecord(), num_rounds=1, timeout=1.0)
        grid.connected = [101, 303]  # node 202 is gone: client 1 gets nothing from now on
        messages = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid))
        assert [m.metadata.dst_node_id for m in messages] == [101, 303]
        assert [int(m.content["config"]["client"]) for m in messages] == [0, 2]
        assert strategy.report()[-1]["lost"] == [1]
    with PrototypeStore() as store, pytest.raises(TooFewNodes, match="min-nodes is 3"):
        run(store, ScriptedGrid(lambda r, k, n: "silent" if (n, r) == (202, 2) else "ok"), min_nodes=3)


def test_a_rerun_on_the_same_db_merges_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "flower.db"
    with PrototypeStore(db) as store:
        first = run(store, ScriptedGrid()).report()
        info = store.info()
    with PrototypeStore(db) as store:
        again = run(store, ScriptedGrid()).report()
        assert store.info() == info  # same version, classes and examples
    assert sum(r["merged_classes"] for r in first) == 18 and sum(r["already_merged"] for r in first) == 0
    assert sum(r["merged_classes"] for r in again) == 0 and sum(r["already_merged"] for r in again) == 9
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]


def _counts(store: PrototypeStore) -> dict[str, int]:
    pulled = store.pull(SPACE)
    return dict(zip(pulled.class_ids, pulled.counts.tolist(), strict=True))


def test_flower_rounds_and_grpc_clients_merge_into_one_federation_on_postgresql(pg_url: str) -> None:
    """Issue #23 item 4: the ServerApp's store takes the same `postgresql://` URL as `fedrecon server`, so Flower
    rounds and gRPC clients of a replica merge into one table, and each side sees the other's classes."""
    from helpers import ServerProcess, wait_until

    from fedrecon.client.recon_client import ReconClient

    with PrototypeStore(pg_url) as store:
        run(store, ScriptedGrid())
        flower = _counts(store)
        assert sum(flower.values()) == 18 * 3
        server = ServerProcess(pg_url).start()
        try:
            with ReconClient(server.address, "grpc-client", state_path=None) as client:
                client.push(SPACE, ["c0", "g0"], [2, 5], np.full((2, 4), 7.0))
                pulled = client.pull(SPACE)
            merged = dict(zip(pulled.class_ids, pulled.counts.tolist(), strict=True))
            assert merged == {**flower, "c0": flower.get("c0", 0) + 2, "g0": 5}
            assert wait_until(lambda: _counts(store) == merged, timeout=10)  # the ServerApp's store follows
        finally:
            server.stop()
