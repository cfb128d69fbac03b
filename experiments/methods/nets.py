"""Trainable pieces the baselines share: a Conv4 + growing linear head, a training loop, weight averaging."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.server.strategy.aggregate import aggregate
from torch import nn


class LabelSpace:
    """Class id <-> output index, shared by every client of a method (class ids are global strings)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, labels: list[str]) -> np.ndarray:
        """Output index of each label (new labels get the next index)."""
        for label in labels:
            if label not in self.index:
                self.index[label] = len(self.ids)
                self.ids.append(label)
        return np.array([self.index[label] for label in labels], dtype=np.int64)


class Classifier(nn.Module):
    """A copy of the encoder's Conv4 (fine-tuned) with a linear head that grows as classes appear."""

    def __init__(self, backbone: nn.Module, dim: int, preprocess: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        with warnings.catch_warnings():  # a head with no outputs yet: torch warns that init is a no-op
            warnings.simplefilter("ignore", UserWarning)
            self.head = nn.Linear(dim, 0)
        self.preprocess = preprocess

    @property
    def classes(self) -> int:
        """Number of outputs."""
        return self.head.out_features

    def grow(self, n: int, seed: int = 0) -> None:
        """Add outputs up to `n` (new rows initialised from a seeded generator; old rows kept)."""
        if n <= self.classes:
            return
        old = self.head
        new = nn.Linear(old.in_features, n).to(old.weight.device)
        gen = torch.Generator().manual_seed(seed + n)
        bound = 1.0 / old.in_features**0.5
        with torch.no_grad():
            new.weight.copy_(torch.empty(n, old.in_features).uniform_(-bound, bound, generator=gen))
            new.bias.zero_()
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.head = new

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone embedding of preprocessed [0, 1] images."""
        return self.backbone(self.preprocess(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def new_classifier(encoder: Any) -> Classifier:
    """A classifier starting from the (pretrained) encoder's weights."""
    return Classifier(encoder.model, encoder.dim, encoder.preprocess).to(encoder.device)


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches over n items (shuffled when rng is given)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train(net: Classifier, images: np.ndarray, targets: np.ndarray, *, epochs: int, batch_size: int, lr: float,
          seed: int, loss_fn: Callable[[torch.Tensor, torch.Tensor, np.ndarray], torch.Tensor] | None = None) -> None:
    """Adam on (images, int targets) for some epochs; default loss is softmax cross-entropy.

    `loss_fn(logits, target_tensor, batch_indices)` lets iCaRL add distillation per batch.
    """
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in batches(len(images), batch_size, rng):
            x = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device)
            y = torch.from_numpy(targets[idx]).to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()


@torch.no_grad()
def outputs(net: Classifier, images: np.ndarray, batch_size: int = 256, features: bool = False) -> np.ndarray:
    """Logits (or backbone features) for images, in eval mode, as float32 numpy."""
    device = next(net.parameters()).device
    net.eval()
    parts = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        parts.append((net.features(x) if features else net(x)).cpu().numpy())
    width = net.head.in_features if features else net.classes
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def state_bytes(net: nn.Module) -> int:
    """Bytes of the float32 weights and buffers a model update carries."""
    return sum(4 * v.numel() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked"))


def average(nets: list[Classifier], weights: list[float]) -> Classifier:
    """Weighted parameter average (Flower's FedAvg `aggregate`) of same-shaped classifiers, as a new one."""
    keys = [k for k in nets[0].state_dict() if not k.endswith("num_batches_tracked")]
    results = [([n.state_dict()[k].detach().cpu().numpy() for k in keys], w) for n, w in zip(nets, weights,
                                                                                           strict=True)]
    averaged = aggregate(results)
    out = copy.deepcopy(nets[0])
    state = out.state_dict()
    for k, v in zip(keys, averaged, strict=True):
        state[k] = torch.as_tensor(np.asarray(v), dtype=state[k].dtype)
    out.load_state_dict(state)
    return out
