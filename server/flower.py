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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrecon.proto.flower_records import Assignment, prototypes_record, read_prototypes
from fedrecon.server.store import PrototypeStore, StoreError

log = logging.getLogger("fedrecon.flower")


@dataclass(frozen=True)
class ReconPlan:
    """Who learns what: `missions[round][client]`, and the held-out image indices of every class."""

    missions: tuple[tuple[Assignment, ...], ...]
    queries: dict[str, tuple[int, ...]]

    @property
    def rounds(self) -> int:
        """Number of mission rounds."""
        return len(self.missions)

    @property
    def clients(self) -> int:
        """Number of clients (missions per round)."""
        return len(self.missions[0]) if self.missions else 0

    def superset(self, through_round: int) -> list[str]:
        """Every class learned by any client in rounds 1..through_round, in plan order."""
        seen: dict[str, None] = {}
        for missions in self.missions[:through_round]:
            for mission in missions:
                seen.update(dict.fromkeys(mission.classes))
        return list(seen)

    def eval_slices(self, through_round: int, parts: int) -> list[Assignment]:
        """The held-out images of the superset split into `parts` contiguous slices of classes."""
        classes = self.superset(through_round)
        chunks = np.array_split(np.arange(len(classes)), max(1, parts))
        return [Assignment(tuple(classes[i] for i in chunk), tuple(self.queries[classes[i]] for i in chunk))
                for chunk in chunks]


def plan_missions(
    class_ids: Sequence[str], sizes: Sequence[int], *, clients: int, rounds: int, ways: int, shots: int,
    queries: int, seed: int,
) -> ReconPlan:
    """Deal `clients * rounds * ways` distinct classes (seeded order) into missions of `ways` classes.

    Each class's images are shuffled (seeded); the first `shots` are learned, the next `queries` held out.
    """
    if min(clients, rounds, ways, shots, queries) < 1:
        raise ValueError("plan_missions: clients, rounds, ways, shots and queries must all be >= 1")
    if len(sizes) != len(class_ids):
        raise ValueError(f"plan_missions: {len(class_ids)} class ids but {len(sizes)} sizes")
    needed = clients * rounds * ways
    if needed > len(class_ids):
        raise ValueError(f"plan_missions: {clients} clients x {rounds} missions x {ways} ways = {needed} classes, "
                         f"but the data set has only {len(class_ids)}")
    small = [c for c, n in zip(class_ids, sizes, strict=True) if n < shots + queries]
    if small:
        raise ValueError(f"plan_missions: {len(small)} classes have fewer than shots+queries={shots + queries} "
                         f"images (e.g. {small[0]!r})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(class_ids))[:needed]
    learn: dict[str, tuple[int, ...]] = {}
    held: dict[str, tuple[int, ...]] = {}
    for i in order:
        perm = rng.permutation(int(sizes[i]))
        learn[class_ids[i]] = tuple(int(v) for v in perm[:shots])
        held[class_ids[i]] = tuple(int(v) for v in perm[shots : shots + queries])
    chosen = [class_ids[i] for i in order]
    missions = []
    for r in range(rounds):
        row = []
        for k in range(clients):
            start = (r * clients + k) * ways
            classes = tuple(chosen[start : start + ways])
            row.append(Assignment(classes, tuple(learn[c] for c in classes)))
        missions.append(tuple(row))
    return ReconPlan(tuple(missions), held)


@dataclass
class RoundLog:
    """What one round did: merges, bytes each way, accuracy (evaluation rounds), seconds."""

    round: int
    merged_classes: int = 0
    merged_examples: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    failures: int = 0
    accuracy: float | None = None
    classes_seen: int = 0
    queries: int = 0
    seconds: float = 0.0
    eval_bytes_down: int = 0


@dataclass
class _Sent:
    client: int
    version: int


class PrototypeAveraging(Strategy):
    """Flower strategy whose state is a `PrototypeStore`: merges per-class deltas by count-weighted averaging.

    `task` is sent to every client (data set, encoder, wire dtype, ...); `space` is the encoder
    fingerprint all deltas must carry. Clients are the first `plan.clients` node ids in sorted order.
    """

    def __init__(
        self, store: PrototypeStore, plan: ReconPlan, space: str, *, task: dict | None = None,
        dtype: str = "float32", eval_clients: int | None = None, client_prefix: str = "flower",
    ) -> None:
        self.store = store
        self.plan = plan
        self.space = space
        self.task = dict(task or {})
        self.dtype = dtype
        self.eval_clients = plan.clients if eval_clients is None else max(1, min(eval_clients, plan.clients))
        self.client_prefix = client_prefix
        self.synced: dict[int, int] = {}
        self.sent: dict[int, _Sent] = {}
        self.client_of: dict[int, int] = {}
        self.rounds: dict[int, RoundLog] = {}
        self._started: dict[int, float] = {}
        self.dim = 0

    # ----------------------------------------------------------------------------- helpers
    def client_id(self, client: int) -> str:
        """Store identity of mission client `client` (stable across simulation and deployment)."""
        return f"{self.client_prefix}-{client}"

    def _nodes(self, grid: Grid) -> list[int]:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) < self.plan.clients:
            raise RuntimeError(f"the plan needs {self.plan.clients} clients but only {len(nodes)} nodes are connected")
        return nodes[: self.plan.clients]

    def _log(self, server_round: int) -> RoundLog:
        return self.rounds.setdefault(server_round, RoundLog(server_round))

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
        nodes = self._nodes(grid)
        entry = self._log(server_round)
        self._started.setdefault(server_round, time.perf_counter())
        if kind == MessageType.TRAIN:
            targets = list(range(self.plan.clients))
            slices: list[Assignment] = []
        else:
            targets = list(range(self.eval_clients))
            slices = self.plan.eval_slices(server_round, self.eval_clients)
        out = []
        self.client_of = {nodes[k]: k for k in range(self.plan.clients)}
        for k in targets:
            config: dict = {**self.task, "server-round": server_round, "client": k, "space": self.space,
                            "dtype": self.dtype}
            arrays = self._sync(k, config)
            if kind == MessageType.TRAIN:
                config.update(self.plan.missions[server_round - 1][k].to_config("mission"))
                entry.bytes_down += arrays.count_bytes()
            else:
                config.update(slices[k].to_config("eval"))
                entry.eval_bytes_down += arrays.count_bytes()
            content = RecordDict({"prototypes": arrays, "config": ConfigRecord(config)})
            out.append(Message(content=content, message_type=kind, dst_node_id=nodes[k]))
        return out

    def _replies(self, replies: Iterable[Message], entry: RoundLog) -> list[tuple[int, Message]]:
        good = []
        for msg in replies:
            if msg.has_error():
                entry.failures += 1
                client = self.client_of.get(int(msg.metadata.src_node_id))
                if client is not None:  # its state is unknown now: send it the full table next time
                    self.synced[client] = 0
                log.warning("round %d: node %s failed: %s", entry.round, msg.metadata.src_node_id, msg.error.reason)
                continue
            config = msg.content["config"]
            client = int(config["client"])
            if str(config["space"]) != self.space:
                entry.failures += 1
                log.warning("round %d: client %d answered in space %s, expected %s; ignored",
                            entry.round, client, config["space"], self.space)
                continue
            sent = self.sent.get(client)
            if sent is not None:
                self.synced[client] = sent.version
            good.append((client, msg))
        return sorted(good, key=lambda item: item[0])

    # ----------------------------------------------------------------------------- Strategy
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per mission client: merged prototypes changed since its last round + its mission."""
        return self._messages(server_round, grid, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Merge each client's deltas through the store (exactly once, in client order)."""
        entry = self._log(server_round)
        for client, msg in self._replies(replies, entry):
            protos = msg.content["prototypes"]
            ids, counts, means = read_prototypes(protos, msg.content["config"]["class-ids"])
            entry.bytes_up += protos.count_bytes()
            if not ids:
                continue
            cid = self.client_id(client)
            seq = self.store.client_record(cid).last_seq + 1
            try:
                self.store.push(cid, self.space, seq, ids, counts, means)
            except StoreError as exc:  # one bad client must not end the run; its deltas are refused whole
                entry.failures += 1
                log.warning("round %d: deltas of client %d refused: %s", server_round, client, exc)
                continue
            entry.merged_classes += len(ids)
            entry.merged_examples += int(counts.sum())
        metrics = MetricRecord({"merged-classes": entry.merged_classes, "merged-examples": entry.merged_examples,
                                "bytes-up": entry.bytes_up, "bytes-down": entry.bytes_down,
                                "failures": entry.failures, "version": self.store.version})
        return None, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sync the evaluating clients and give each a slice of the superset's held-out images."""
        return self._messages(server_round, grid, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Class-incremental accuracy over the superset: total correct over total queries."""
        entry = self._log(server_round)
        correct = total = 0
        for _, msg in self._replies(replies, entry):
            metrics = msg.content["metrics"]
            correct += int(metrics["correct"])
            total += int(metrics["queries"])
        entry.classes_seen = len(self.plan.superset(server_round))
        entry.queries = total
        entry.accuracy = correct / total if total else None
        entry.seconds = time.perf_counter() - self._started.get(server_round, time.perf_counter())
        if entry.accuracy is None:
            return None
        return MetricRecord({"accuracy": entry.accuracy, "classes-seen": entry.classes_seen, "queries": total})

    def summary(self) -> None:
        """Log the plan and the store this strategy merges into."""
        log.info("PrototypeAveraging: %d clients x %d missions, space %s, store %s, wire %s, %d evaluating",
                 self.plan.clients, self.plan.rounds, self.space, self.store.path or "in memory", self.dtype,
                 self.eval_clients)

    def report(self) -> list[dict]:
        """Per-round log as JSON-able dicts."""
        return [vars(self.rounds[r]).copy() for r in sorted(self.rounds)]


@dataclass
class Described:
    """What a client's query answer says about the data set and encoder it will use."""

    space: str
    dim: int
    class_ids: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


def describe(grid: Grid, task: dict, timeout: float = 600.0) -> Described:
    """Ask the first connected node (a QUERY message) for its encoder space and its data set's classes."""
    nodes = sorted(int(n) for n in grid.get_node_ids())
    if not nodes:
        raise RuntimeError("no Flower nodes connected")
    msg = Message(content=RecordDict({"config": ConfigRecord({**task, "what": "describe"})}),
                  message_type=MessageType.QUERY, dst_node_id=nodes[0])
    replies = list(grid.send_and_receive([msg], timeout=timeout))
    if not replies or replies[0].has_error():
        reason = replies[0].error.reason if replies else "no reply"
        raise RuntimeError(f"node {nodes[0]} could not describe its data set: {reason}")
    config = replies[0].content["config"]
    return Described(str(config["space"]), int(config["dim"]), [str(c) for c in config["class-ids"]],
                     [int(n) for n in config["sizes"]])
