"""Prototype averaging as a Flower strategy: the gRPC server's store and merge, driven by Flower rounds.

Each training round sends every client the merged prototypes changed since its last round plus its
mission (class ids and image indices to learn), and merges the returned per-class deltas through the
same `PrototypeStore` the gRPC server uses (in memory, or durable in SQLite): no second merge. Each
evaluation round syncs the evaluating clients again and gives each a slice of the held-out images of
every class learned so far; the federation's class-incremental accuracy over that superset is the
sum of their correct answers over the sum of their queries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrecon.proto.flower_records import Assignment, prototypes_record, read_prototypes
from fedrecon.proto.merger import next_seq
from fedrecon.server.errors import StoreError
from fedrecon.server.flower_plan import ReconPlan
from fedrecon.server.store import PrototypeStore

log = logging.getLogger("fedrecon.flower")


@dataclass
class RoundLog:
    """What one round did: merges, bytes each way, accuracy (evaluation rounds), lost nodes, seconds."""

    round: int
    merged_classes: int = 0
    merged_examples: int = 0
    already_merged: int = 0  # missions found in the store already (a rerun on the same db): not merged again
    bytes_down: int = 0
    bytes_up: int = 0
    failures: int = 0
    answered: int = 0
    lost: list[int] = field(default_factory=list)  # mission clients whose node failed or did not answer
    accuracy: float | None = None
    classes_seen: int = 0
    queries: int = 0
    seconds: float = 0.0
    eval_bytes_down: int = 0


@dataclass
class _Sent:
    client: int
    version: int


class TooFewNodes(RuntimeError):
    """Fewer nodes than `min-nodes` are alive or answered: the run cannot go on (the ServerApp fails)."""


class PrototypeAveraging(Strategy):
    """Flower strategy whose state is a `PrototypeStore`: merges per-class deltas by count-weighted averaging.

    `task` is sent to every client (data set, encoder, wire dtype, ...); `space` is the encoder
    fingerprint all deltas must carry. Mission clients are bound to the first `plan.clients` node ids
    (sorted) of the first round and keep them. A round goes on with the nodes that are connected and
    answer, if at least `min_nodes` (default 1) do; a lost node's client is skipped from then on, and
    one that failed is sent the full table next time. Each mission is pushed under its own store
    identity (plan key, client, round) as its first push (`next_seq(0)`), so a rerun of the same plan on the
    same durable store finds it there and does not merge it twice.
    """

    def __init__(
        self, store: PrototypeStore, plan: ReconPlan, space: str, *, task: dict | None = None,
        dtype: str = "float32", eval_clients: int | None = None, client_prefix: str = "flower", min_nodes: int = 1,
    ) -> None:
        self.store = store
        self.plan = plan
        self.space = space
        self.task = dict(task or {})
        self.dtype = dtype
        self.eval_clients = plan.clients if eval_clients is None else max(1, min(eval_clients, plan.clients))
        self.client_prefix = client_prefix
        self.min_nodes = max(1, int(min_nodes))
        self.plan_key = plan.key(space)
        self.synced: dict[int, int] = {}
        self.sent: dict[int, _Sent] = {}
        self.node_of: dict[int, int] = {}  # mission client -> node id, fixed at the first round
        self.outbox: dict[tuple[int, str], list[tuple[Message, int]]] = {}
        self.known: set[str] = set()  # classes in the store's table from this plan's missions
        self.rounds: dict[int, RoundLog] = {}
        self._started: dict[int, float] = {}
        self.dim = 0

    # ----------------------------------------------------------------------------- helpers
    def client_id(self, client: int, server_round: int) -> str:
        """Store identity of one mission: plan key, client and round (stable across simulation and deployment)."""
        return f"{self.client_prefix}-{self.plan_key}-{client}-m{server_round}"

    def _alive(self, grid: Grid, server_round: int) -> list[int]:
        """Mission clients whose node is connected now; fewer than `min_nodes` ends the run."""
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if not self.node_of:
            self.node_of = dict(enumerate(nodes[: self.plan.clients]))
        connected = set(nodes)
        alive = [k for k, node in sorted(self.node_of.items()) if node in connected]
        entry = self._log(server_round)
        for k in sorted(set(self.node_of) - set(alive)):
            self.synced[k] = 0
            if k not in entry.lost:
                entry.lost.append(k)
        if len(alive) < self.min_nodes:
            raise TooFewNodes(f"round {server_round}: {len(alive)} of {self.plan.clients} mission nodes connected, "
                              f"min-nodes is {self.min_nodes}")
        return alive

    def _log(self, server_round: int) -> RoundLog:
        return self.rounds.setdefault(server_round, RoundLog(server_round))

    def _superset(self, server_round: int) -> list[str]:
        """Classes planned through this round that some client actually merged (lost missions are not scored)."""
        return [c for c in self.plan.superset(server_round) if c in self.known]

    def _sync(self, client: int, config: dict) -> ArrayRecord:
        """The merged prototypes changed since `client`'s last sync (since 0: the full table, replacing its own)."""
        since = self.synced.get(client, 0)
        pulled = self.store.pull(self.space, since)
        if pulled.means.ndim == 2 and pulled.means.shape[1]:
            self.dim = pulled.means.shape[1]
        config.update({"since": since, "version": pulled.version, "global-classes": pulled.class_ids})
        self.sent[client] = _Sent(client, pulled.version)
        return prototypes_record(pulled.counts, pulled.means, self.dtype, self.dim)

    def _messages(self, server_round: int, grid: Grid, kind: str) -> list[Message]:
        alive = self._alive(grid, server_round)
        entry = self._log(server_round)
        self._started.setdefault(server_round, time.perf_counter())
        if kind == MessageType.TRAIN:
            targets = alive
            slices: list[Assignment] = []
        else:
            targets = alive[: self.eval_clients]
            slices = self.plan.slices(self._superset(server_round), len(targets))
        out = []
        for i, k in enumerate(targets):
            config: dict = {**self.task, "server-round": server_round, "client": k, "space": self.space,
                            "dtype": self.dtype}
            arrays = self._sync(k, config)
            if kind == MessageType.TRAIN:
                config.update(self.plan.missions[server_round - 1][k].to_config("mission"))
                entry.bytes_down += arrays.count_bytes()
            else:
                config.update(slices[i].to_config("eval"))
                entry.eval_bytes_down += arrays.count_bytes()
            content = RecordDict({"prototypes": arrays, "config": ConfigRecord(config)})
            out.append(Message(content=content, message_type=kind, dst_node_id=self.node_of[k]))
        self.outbox[server_round, kind] = list(zip(out, targets, strict=True))
        return out

    def _replies(self, replies: Iterable[Message], entry: RoundLog, kind: str) -> list[tuple[int, Message]]:
        """Good replies by client; failed and missing ones mark their client lost for this round.

        A reply is matched to the message it answers (`reply_to_message_id`), never by `src_node_id`: the
        error replies the SuperLink makes for a node that went away carry its own id, not the node's.
        """
        sent = self.outbox.get((entry.round, kind), [])
        by_id = {msg.metadata.message_id: k for msg, k in sent}
        good, heard = [], set()
        for msg in replies:
            client = by_id.get(msg.metadata.reply_to_message_id)
            if client is None:
                log.warning("round %d: a reply to an unknown message (%s) ignored", entry.round,
                            msg.metadata.reply_to_message_id)
                continue
            heard.add(client)
            if msg.has_error():
                self._lose(entry, client, f"failed: {msg.error.reason}")
                continue
            config = msg.content["config"]
            if str(config["space"]) != self.space or int(config["client"]) != client:
                self._lose(entry, client, f"answered as client {config['client']} in space {config['space']}; "
                                          f"expected client {client} in {self.space}")
                continue
            if client in self.sent:
                self.synced[client] = self.sent[client].version
            good.append((client, msg))
        for _, client in sent:
            if client not in heard:
                self._lose(entry, client, "no reply within the round timeout")
        entry.answered = len(good)
        needed = min(self.min_nodes, len(sent))
        if len(good) < needed:
            raise TooFewNodes(f"round {entry.round} ({kind}): {len(good)} of {len(sent)} nodes answered, "
                              f"min-nodes is {self.min_nodes}")
        return sorted(good, key=lambda item: item[0])

    def _lose(self, entry: RoundLog, client: int, why: str) -> None:
        """A client whose reply is missing or unusable: counted, and sent the full table next time."""
        entry.failures += 1
        if client not in entry.lost:
            entry.lost.append(client)
        self.synced[client] = 0  # its state is unknown now
        log.warning("round %d: client %d (node %s) %s", entry.round, client, self.node_of.get(client), why)

    # ----------------------------------------------------------------------------- Strategy
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per connected mission client: merged prototypes changed since its last round + its mission."""
        return self._messages(server_round, grid, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Merge each client's deltas through the store (exactly once, in client order)."""
        entry = self._log(server_round)
        for client, msg in self._replies(replies, entry, MessageType.TRAIN):
            protos = msg.content["prototypes"]
            deltas = read_prototypes(protos, msg.content["config"]["class-ids"])
            entry.bytes_up += protos.count_bytes()
            if not deltas.class_ids:
                continue
            try:
                seq = next_seq(0)  # each (plan, client, round) identity pushes once
                result = self.store.push(self.client_id(client, server_round), seq, self.space, deltas)
            except StoreError as exc:  # one bad client must not end the run; its deltas are refused whole
                entry.failures += 1
                log.warning("round %d: deltas of client %d refused: %s", server_round, client, exc)
                continue
            self.known.update(deltas.class_ids)
            if result.duplicate:
                entry.already_merged += 1
                log.warning("round %d: the mission of client %d is already in this store (plan %s; a rerun on the "
                            "same db): not merged again", server_round, client, self.plan_key)
                continue
            entry.merged_classes += len(deltas.class_ids)
            entry.merged_examples += int(deltas.counts.sum())
        metrics = MetricRecord({"merged-classes": entry.merged_classes, "merged-examples": entry.merged_examples,
                                "already-merged": entry.already_merged, "bytes-up": entry.bytes_up,
                                "bytes-down": entry.bytes_down, "failures": entry.failures,
                                "version": self.store.version})
        return None, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sync the connected evaluating clients and give each a slice of the merged superset's held-out images."""
        return self._messages(server_round, grid, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Class-incremental accuracy over the merged superset: total correct over total queries answered."""
        entry = self._log(server_round)
        correct = total = 0
        for _, msg in self._replies(replies, entry, MessageType.EVALUATE):
            metrics = msg.content["metrics"]
            correct += int(metrics["correct"])
            total += int(metrics["queries"])
        entry.classes_seen = len(self._superset(server_round))
        entry.queries = total
        entry.accuracy = correct / total if total else None
        entry.seconds = time.perf_counter() - self._started.get(server_round, time.perf_counter())
        if entry.accuracy is None:
            return None
        return MetricRecord({"accuracy": entry.accuracy, "classes-seen": entry.classes_seen, "queries": total})

    def summary(self) -> None:
        """Log the plan and the store this strategy merges into."""
        log.info("PrototypeAveraging: %d clients x %d missions, space %s, store %s, wire %s, %d evaluating, "
                 "min-nodes %d, plan %s", self.plan.clients, self.plan.rounds, self.space,
                 self.store.path or "in memory", self.dtype, self.eval_clients, self.min_nodes, self.plan_key)

    def report(self) -> list[dict]:
        """Per-round log as JSON-able dicts."""
        return [{**vars(self.rounds[r]), "lost": list(self.rounds[r].lost)} for r in sorted(self.rounds)]
