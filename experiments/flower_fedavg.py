"""The `fedavg` baseline on Flower's own `FedAvg` strategy, on the same Conv4, data and missions as fedrecon.

Server side: `MissionFedAvg` keeps Flower's FedAvg sampling and example-weighted averaging and only adds
each node's mission (or evaluation slice) to the config it sends. Client side: the handlers load the
global Conv4 + linear head (one output per planned class), fine-tune it with Adam on the mission, and
return the weights; evaluation is arg-max over the classes seen so far. Its messages carry the action
`fedavg` (`train.fedavg`, `evaluate.fedavg`, `query.fedavg`), which the experiments' ClientApp
(`fedrecon.experiments.flower_app`) handles.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrecon.client.flower import assigned_images, data_for, encoder_for, task_of
from fedrecon.experiments.methods.nets import Classifier, new_classifier, outputs, train
from fedrecon.proto.flower_records import Assignment
from fedrecon.server.flower_app import build_plan, round_totals, wait_for_nodes
from fedrecon.server.flower_plan import ReconPlan

BATCH_SIZE = 64
ACTION = "fedavg"  # the ClientApp action of every FedAvg message: `train.fedavg`, `evaluate.fedavg`, `query.fedavg`


def fedavg_type(kind: str) -> str:
    """The message type of a FedAvg message of `kind` (train, evaluate, query)."""
    return f"{kind}.{ACTION}"


# --------------------------------------------------------------------------------- client side
def _classifier(task: dict[str, Any], head: int) -> Classifier:
    net = new_classifier(encoder_for(task))
    net.grow(head, 0)
    return net


def _state(net: Classifier) -> ArrayRecord:
    """Float weights and buffers (BatchNorm's step counter dropped) as an ArrayRecord."""
    return ArrayRecord({k: v.detach().cpu() for k, v in net.state_dict().items()
                        if not k.endswith("num_batches_tracked")})


def _load(net: Classifier, arrays: ArrayRecord) -> None:
    missing, unexpected = net.load_state_dict(arrays.to_torch_state_dict(), strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise ValueError(f"fedavg: global arrays do not fit the model (missing {missing}, unexpected {unexpected})")


def describe_model(msg: Message, context: Context) -> RecordDict:
    """The initial global model: the encoder's Conv4 plus a seeded head with `head-size` outputs."""
    config = msg.content["config"]
    net = _classifier(task_of(config), int(config["head-size"]))
    return RecordDict({"arrays": _state(net), "config": ConfigRecord({"head-size": net.classes})})


def train_fedavg(msg: Message, context: Context) -> RecordDict:
    """Fine-tune the global model on this node's mission; reply with the weights and example count."""
    config = msg.content["config"]
    task = task_of(config)
    labels = [str(c) for c in config["label-classes"]]
    net = _classifier(task, len(labels))
    _load(net, msg.content["arrays"])
    images, ids = assigned_images(data_for(task, context), Assignment.from_config(config, "mission"))
    index = {c: i for i, c in enumerate(labels)}
    targets = np.array([index[c] for c in ids], dtype=np.int64)
    if len(images):
        train(net, images, targets, epochs=int(config["epochs"]), batch_size=BATCH_SIZE, lr=float(config["lr"]),
              seed=int(config["train-seed"]))
    return RecordDict({"arrays": _state(net), "metrics": MetricRecord({"num-examples": len(images)})})


def evaluate_fedavg(msg: Message, context: Context) -> RecordDict:
    """Accuracy of the global model on this node's evaluation slice, over the classes seen so far."""
    config = msg.content["config"]
    task = task_of(config)
    labels = [str(c) for c in config["label-classes"]]
    seen = int(config["classes-seen"])
    net = _classifier(task, len(labels))
    _load(net, msg.content["arrays"])
    images, ids = assigned_images(data_for(task, context), Assignment.from_config(config, "eval"))
    correct = 0
    if len(images):
        predicted = outputs(net, images)[:, :seen].argmax(1)
        correct = int(sum(labels[p] == c for p, c in zip(predicted, ids, strict=True)))
    accuracy = correct / len(ids) if ids else 0.0
    return RecordDict({"metrics": MetricRecord({"accuracy": accuracy, "correct": correct,
                                                "num-examples": len(ids)})})


# --------------------------------------------------------------------------------- server side
class MissionFedAvg(FedAvg):
    """Flower's FedAvg (sampling, example-weighted averaging) with a per-node mission added to each message."""

    def __init__(self, plan: ReconPlan, task: dict[str, Any], nodes: list[int], *, epochs: int, lr: float,
                 seed: int) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=plan.clients,
                         min_evaluate_nodes=plan.clients, min_available_nodes=plan.clients)
        self.plan, self.task, self.epochs, self.lr, self.seed = plan, task, epochs, lr, seed
        self.client_of = {node: k for k, node in enumerate(nodes)}
        self.labels = plan.superset(plan.rounds)
        self.bytes: dict[int, dict[str, int]] = {}

    def _personalise(self, messages: Iterable[Message], server_round: int, kind: str) -> list[Message]:
        out = []
        slices = self.plan.slices(self.plan.superset(server_round), self.plan.clients)
        counter = self.bytes.setdefault(server_round, {"down": 0, "up": 0, "eval_down": 0})
        for msg in messages:
            node = msg.metadata.dst_node_id
            k = self.client_of.get(node)
            if k is None:  # a node beyond the plan's clients: nothing to do this round
                continue
            config = {**dict(msg.content[self.configrecord_key]), **self.task, "client": k,
                      "label-classes": self.labels, "epochs": self.epochs, "lr": self.lr,
                      "train-seed": self.seed * 1_000_003 + server_round * 1000 + k,
                      "classes-seen": len(self.plan.superset(server_round))}
            if kind == MessageType.TRAIN:
                config.update(self.plan.missions[server_round - 1][k].to_config("mission"))
            else:
                config.update(slices[k].to_config("eval"))
            arrays = msg.content[self.arrayrecord_key]
            counter["down" if kind == MessageType.TRAIN else "eval_down"] += arrays.count_bytes()
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: ConfigRecord(config)})
            out.append(Message(content=content, message_type=fedavg_type(kind), dst_node_id=node))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's FedAvg messages, each given its node's mission."""
        return self._personalise(super().configure_train(server_round, arrays, config, grid), server_round,
                                 MessageType.TRAIN)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's FedAvg aggregation; counts the bytes of the returned weights."""
        replies = list(replies)
        counter = self.bytes.setdefault(server_round, {"down": 0, "up": 0, "eval_down": 0})
        counter["up"] += sum(m.content[self.arrayrecord_key].count_bytes() for m in replies if not m.has_error())
        return super().aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Flower's FedAvg evaluation messages, each given a slice of the superset's held-out images."""
        return self._personalise(super().configure_evaluate(server_round, arrays, config, grid), server_round,
                                 MessageType.EVALUATE)


def run_fedavg(grid: Grid, settings: Any) -> dict[str, Any]:
    """The FedAvg baseline on the same plan as fedrecon: initial model from a node, `missions` rounds."""
    t0 = time.perf_counter()
    nodes = wait_for_nodes(grid, settings.clients, settings.wait_nodes)[: settings.clients]
    plan, space, dim = build_plan(grid, settings)
    task = settings.task()
    labels = plan.superset(plan.rounds)
    query = Message(content=RecordDict({"config": ConfigRecord({**task, "head-size": len(labels)})}),
                    message_type=fedavg_type(MessageType.QUERY), dst_node_id=nodes[0])
    reply = list(grid.send_and_receive([query], timeout=settings.timeout))
    if not reply or reply[0].has_error():
        raise RuntimeError(f"fedavg: node {nodes[0]} gave no initial model: "
                           f"{reply[0].error.reason if reply else 'no reply'}")
    initial = reply[0].content["arrays"]
    strategy = MissionFedAvg(plan, task, nodes, epochs=settings.epochs, lr=settings.lr, seed=settings.seed)
    result = strategy.start(grid, initial, num_rounds=plan.rounds, timeout=settings.timeout)
    rounds = []
    for r in range(1, plan.rounds + 1):
        metrics = result.evaluate_metrics_clientapp.get(r)
        counter = strategy.bytes.get(r, {"down": 0, "up": 0, "eval_down": 0})
        rounds.append({"round": r, "classes_seen": len(plan.superset(r)),
                       "accuracy": float(metrics["accuracy"]) if metrics else None,
                       "bytes_up": counter["up"], "bytes_down": counter["down"],
                       "eval_bytes_down": counter["eval_down"]})
    return {"method": "fedavg", "transport": "flower", "settings": vars(settings).copy(), "space": space, "dim": dim,
            "model_bytes": int(initial.count_bytes()), "rounds": rounds, **round_totals(rounds),
            "wall_s": time.perf_counter() - t0}
