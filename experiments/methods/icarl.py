"""iCaRL (Rebuffi et al. 2017) per client: exemplar memory chosen by herding, distillation, and
nearest-mean-of-exemplars classification; federated by weight averaging plus pooling the exemplars.

Pooling exemplars at the server is generous to iCaRL (raw exemplar images travel; counted in bytes):
after a merge every client holds the averaged network and the pooled memory cut back to the budget.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

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


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def herding(features: np.ndarray, m: int) -> np.ndarray:
    """Indices of `m` examples whose running mean best tracks the class mean (iCaRL's herding), in order."""
    f = normalize(np.asarray(features, np.float64))
    mu = f.mean(0)
    chosen: list[int] = []
    running = np.zeros_like(mu)
    available = np.ones(len(f), dtype=bool)
    for t in range(min(m, len(f))):
        scores = np.linalg.norm(mu - (running + f) / (t + 1), axis=1)
        scores[~available] = np.inf
        k = int(scores.argmin())
        chosen.append(k)
        available[k] = False
        running += f[k]
    return np.array(chosen, dtype=np.int64)


class _Client:
    """One iCaRL learner: a network, its exemplar memory (class id -> images, herding order), cached means."""

    def __init__(self, net: Classifier, exemplars: dict[str, np.ndarray]) -> None:
        self.net = net
        self.exemplars = exemplars
        self.means: tuple[list[str], np.ndarray] | None = None


class ICaRL(Method):
    """iCaRL with a fixed exemplar budget (`memory`, paper: 4000 images in total)."""

    name = "icarl"
    shared_after_merge = True
    defaults: ClassVar[dict[str, Any]] = {"memory": 4000, "epochs": 1, "batch_size": 64, "lr": 1e-3}

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        if int(self.config["memory"]) < 1:
            raise ValueError("icarl: memory (exemplar budget) must be >= 1")
        self.labels = LabelSpace()
        self.server = _Client(new_classifier(encoder), {})
        self.clients: dict[int, _Client] = {}
        self.known_clients: set[int] = set(range(int(self.config.get("clients") or 0)))
        self.round: dict[int, int] = {}
        self.seed = int(self.config.get("seed") or 0)
        self._step = 0

    def _client(self, client: int | None) -> _Client:
        if client is None:
            return self.server
        if client not in self.clients:
            self.clients[client] = _Client(copy.deepcopy(self.server.net), dict(self.server.exemplars))
        return self.clients[client]

    def _reduce(self, state: _Client) -> None:
        """Cut every class's exemplars to budget // classes (herding order, so the head is kept)."""
        if not state.exemplars:
            return
        m = max(1, int(self.config["memory"]) // len(state.exemplars))
        for cid, ims in state.exemplars.items():
            state.exemplars[cid] = ims[:m]

    def _select(self, state: _Client, pools: dict[str, np.ndarray], m: int) -> dict[str, np.ndarray]:
        """Herd `m` exemplars per class out of each pool (features from one forward pass over all pools)."""
        ids = list(pools)
        feats = outputs(state.net, np.concatenate([pools[c] for c in ids]), features=True)
        bounds = np.cumsum([0] + [len(pools[c]) for c in ids])
        return {c: pools[c][herding(feats[bounds[i] : bounds[i + 1]], m)] for i, c in enumerate(ids)}

    def learn(self, client: int, images: np.ndarray, labels: list[str]) -> None:
        """Train on the mission plus the exemplars with distillation on old outputs, then update the memory."""
        check_batch(self.name, images, labels)
        self.known_clients.add(client)
        state = self._client(client)
        labels = list(labels)
        old_classes = state.net.classes
        old_net = copy.deepcopy(state.net) if old_classes else None
        ex_ids = [cid for cid, ims in state.exemplars.items() for _ in range(len(ims))]
        data = np.concatenate([np.asarray(images, np.float32), *state.exemplars.values()])
        targets = self.labels.encode(labels + ex_ids)
        state.net.grow(len(self.labels), self.seed)
        n_out = state.net.classes
        soft = None
        if old_net is not None:
            soft = torch.sigmoid(torch.from_numpy(outputs(old_net, data)[:, :old_classes]))

        def loss_fn(logits: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            target = F.one_hot(y, n_out).float()
            if soft is not None:
                target[:, :old_classes] = soft[idx].to(target.device)
            return F.binary_cross_entropy_with_logits(logits, target)

        self._step += 1
        train(state.net, data, targets, epochs=self.config["epochs"], batch_size=self.config["batch_size"],
              lr=self.config["lr"], seed=self.seed * 1_000_003 + self._step, loss_fn=loss_fn)
        new = sorted(set(labels))
        arr = np.asarray(images, np.float32)
        lab = np.asarray(labels, dtype=object)
        classes_after = len(set(state.exemplars) | set(new))
        m = max(1, int(self.config["memory"]) // classes_after)
        pools = {}
        for cid in new:
            pool = arr[lab == cid]
            if cid in state.exemplars:  # a revisit: choose again among the old exemplars and the new images
                pool = np.concatenate([state.exemplars[cid], pool])
            pools[cid] = pool
        state.exemplars.update(self._select(state, pools, m))
        self._reduce(state)
        state.means = None
        self.round[client] = self.round.get(client, 0) + len(images)

    def merge(self) -> None:
        """Average the participants' networks (example-weighted) and pool their exemplars at the server."""
        if not self.round:
            return
        parts = [self.clients[c] for c in sorted(self.round)]
        for p in parts:
            p.net.grow(len(self.labels), self.seed)
            self.bytes_up += state_bytes(p.net) + sum(int(x.size) for x in p.exemplars.values())
        net = average([p.net for p in parts], [float(self.round[c]) for c in sorted(self.round)])
        pooled: dict[str, list[np.ndarray]] = {cid: [ims] for cid, ims in self.server.exemplars.items()}
        for p in parts:
            for cid, ims in p.exemplars.items():
                pooled.setdefault(cid, []).append(ims)
        server = _Client(net, {})
        m = max(1, int(self.config["memory"]) // max(1, len(pooled)))
        # the server's own copy may repeat a client's exemplars: keep each image once
        pools = {cid: np.unique(np.concatenate(group), axis=0) for cid, group in pooled.items()}
        server.exemplars = self._select(server, pools, m)
        self.server = server
        self.clients.clear()
        self.round.clear()
        memory_bytes = sum(int(x.size) for x in server.exemplars.values())
        self.bytes_down += (state_bytes(net) + memory_bytes) * len(self.known_clients)

    def predict(self, client: int | None, images: np.ndarray) -> list[str]:
        """Nearest mean of exemplars in the (normalised) feature space of the client's network."""
        state = self.server if client is None or client not in self.clients else self.clients[client]
        if not state.exemplars:
            raise ValueError("icarl: no classes learned yet")
        if state.means is None:
            ids = list(state.exemplars)
            feats = normalize(outputs(state.net, np.concatenate([state.exemplars[c] for c in ids]), features=True))
            bounds = np.cumsum([0] + [len(state.exemplars[c]) for c in ids])
            means = np.stack([feats[bounds[i] : bounds[i + 1]].mean(0) for i in range(len(ids))])
            state.means = (ids, normalize(means))
        ids, means = state.means
        feats = normalize(outputs(state.net, images, features=True))
        return [ids[i] for i in (feats @ means.T).argmax(1)]
