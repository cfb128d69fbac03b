"""Gradient baselines: `lower` (fine-tune per mission, merge by weight averaging), `fedavg`, `upper`.

- lower: each client fine-tunes the whole network + softmax head on its mission only (so it forgets),
  and the server averages the participating clients' weights uniformly.
- fedavg: FedAvg (Flower's `aggregate`, weighted by examples) for `rounds` communication rounds per
  mission round, each client training `local_epochs` from the server model on its mission data.
- upper: the server retrains on all data every client has seen so far after each merge (costly), and
  classifies with the softmax head or (`classifier = "nme"`) by the nearest class mean of its features.
After a merge every client holds the server's model.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np

from fedrecon.experiments.methods.base import Method, check_batch
from fedrecon.experiments.methods.nets import (
    Classifier,
    LabelSpace,
    average,
    new_classifier,
    outputs,
    state_bytes,
    train,
)
from fedrecon.proto.prototypes import PrototypeTable


class _Finetuned(Method):
    """Shared state: a server classifier, per-client copies, one label space."""

    shared_after_merge = True
    defaults: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 64, "lr": 1e-3}

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        self.labels = LabelSpace()
        self.server = new_classifier(encoder)
        self.clients: dict[int, Classifier] = {}
        self.known_clients: set[int] = set(range(int(self.config.get("clients") or 0)))
        self.seed = int(self.config.get("seed") or 0)
        self._step = 0

    def _next_seed(self) -> int:
        self._step += 1
        return self.seed * 1_000_003 + self._step

    def _net(self, client: int | None) -> Classifier:
        net = self.server if client is None else self.clients.get(client, self.server)
        net.grow(len(self.labels), self.seed)
        return net

    def predict(self, client: int | None, images: np.ndarray) -> list[str]:
        """Arg-max over the classes seen so far by anyone."""
        if len(self.labels) == 0:
            raise ValueError(f"{self.name}: no classes learned yet")
        logits = outputs(self._net(client), images)[:, : len(self.labels)]
        return [self.labels.ids[i] for i in logits.argmax(1)]

    def _broadcast(self) -> None:
        """Every client drops its copy and uses the server model; counts the download per client."""
        self.clients.clear()
        self.bytes_down += state_bytes(self.server) * len(self.known_clients)


class Lower(_Finetuned):
    """Fine-tune on each mission only (catastrophic forgetting), merge by uniform weight averaging."""

    name = "lower"

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        self.round: list[int] = []

    def learn(self, client: int, images: np.ndarray, labels: list[str]) -> None:
        """Copy the server model (first time this round) and fine-tune it on this mission."""
        check_batch(self.name, images, labels)
        targets = self.labels.encode(list(labels))
        self.known_clients.add(client)
        if client not in self.clients:
            self.clients[client] = copy.deepcopy(self.server)
        net = self._net(client)
        train(net, images, targets, epochs=self.config["epochs"], batch_size=self.config["batch_size"],
              lr=self.config["lr"], seed=self._next_seed())
        if client not in self.round:
            self.round.append(client)

    def merge(self) -> None:
        """Uniform average of the clients that trained this round; everyone takes the result."""
        if not self.round:
            return
        nets = [self._net(c) for c in self.round]
        self.bytes_up += sum(state_bytes(n) for n in nets)
        self.server = average(nets, [1.0] * len(nets))
        self.round = []
        self._broadcast()


class FedAvg(_Finetuned):
    """FedAvg of fine-tuned weights: `rounds` rounds of local training + example-weighted averaging."""

    name = "fedavg"
    defaults: ClassVar[dict[str, Any]] = {**_Finetuned.defaults, "rounds": 1, "local_epochs": 1}

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        self.data: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def learn(self, client: int, images: np.ndarray, labels: list[str]) -> None:
        """Keep the mission for this round's federated training (trained in `merge`)."""
        check_batch(self.name, images, labels)
        self.known_clients.add(client)
        self.data.setdefault(client, []).append((np.asarray(images, np.float32), self.labels.encode(list(labels))))

    def merge(self) -> None:
        """Run the communication rounds over the clients that have data this mission round."""
        if not self.data:
            return
        self.server.grow(len(self.labels), self.seed)
        for _ in range(int(self.config["rounds"])):
            nets, weights = [], []
            for _client, parts in sorted(self.data.items()):
                images = np.concatenate([p[0] for p in parts])
                targets = np.concatenate([p[1] for p in parts])
                net = copy.deepcopy(self.server)
                self.bytes_down += state_bytes(net)
                train(net, images, targets, epochs=self.config["local_epochs"], batch_size=self.config["batch_size"],
                      lr=self.config["lr"], seed=self._next_seed())
                self.bytes_up += state_bytes(net)
                nets.append(net)
                weights.append(float(len(images)))
            self.server = average(nets, weights)
        self.data.clear()
        self._broadcast()


class Upper(_Finetuned):
    """Upper bound: after each merge the server trains on all data all clients have seen (raw data moves)."""

    name = "upper"
    defaults: ClassVar[dict[str, Any]] = {**_Finetuned.defaults, "restart": False, "classifier": "softmax"}

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        if self.config["classifier"] not in ("softmax", "nme"):
            raise ValueError(f"upper: classifier must be 'softmax' or 'nme', got {self.config['classifier']!r}")
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.fresh = False
        self.means: PrototypeTable | None = None  # nme: class means of the retrained features

    def learn(self, client: int, images: np.ndarray, labels: list[str]) -> None:
        """Send the mission's raw images to the server pool (one byte per pixel up)."""
        check_batch(self.name, images, labels)
        self.known_clients.add(client)
        self.images.append(np.asarray(images, np.float32))
        self.targets.append(self.labels.encode(list(labels)))
        self.bytes_up += int(np.asarray(images).size)
        self.fresh = True

    def merge(self) -> None:
        """Retrain on the whole pool (from the pretrained encoder when `restart`, else from the last model)."""
        if not self.fresh:
            return
        if self.config["restart"]:
            self.server = new_classifier(self.encoder)
        net = self._net(None)
        images, targets = np.concatenate(self.images), np.concatenate(self.targets)
        train(net, images, targets, epochs=self.config["epochs"], batch_size=self.config["batch_size"],
              lr=self.config["lr"], seed=self._next_seed())
        if self.config["classifier"] == "nme":
            self.means = PrototypeTable()
            self.means.add_examples([self.labels.ids[t] for t in targets], outputs(net, images, features=True))
        self.fresh = False
        self._broadcast()

    def predict(self, client: int | None, images: np.ndarray) -> list[str]:
        """Softmax arg-max, or the nearest mean of the retrained features of every class's training data."""
        if self.config["classifier"] == "softmax" or self.means is None:
            return super().predict(client, images)
        return self.means.classify(outputs(self._net(client), images, features=True))
