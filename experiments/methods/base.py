"""The method interface every reconnaissance method implements, so all methods run on the same missions.

A method is built with `(encoder, config)`; the runner calls `learn` once per client per mission,
`merge` after every mission round, and `predict` to evaluate a client (or the server: `client=None`).
`bytes_up` / `bytes_down` count what crossed the network, so methods compare on communication too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class Method(ABC):
    """Base of all methods: holds the encoder, the merged config and the byte counters."""

    name: ClassVar[str] = "method"
    defaults: ClassVar[dict[str, Any]] = {}
    # True when every client holds exactly the server's model after `merge` (the runner then scores it once)
    shared_after_merge: ClassVar[bool] = False

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        unknown = set(config or {}) - set(self.defaults) - {"seed", "clients"}
        if unknown:
            raise ValueError(f"{self.name}: unknown config keys {sorted(unknown)} (known: {sorted(self.defaults)})")
        self.encoder = encoder
        self.config: dict[str, Any] = {**self.defaults, **(config or {})}
        self.bytes_up = 0
        self.bytes_down = 0

    @abstractmethod
    def learn(self, client: int, images: np.ndarray, labels: list[str]) -> None:
        """Learn one mission's training data (images (N, C, H, W) float32, one class id per image) on a client."""

    @abstractmethod
    def merge(self) -> None:
        """Federated aggregation after a mission round; afterwards clients hold the merged knowledge."""

    @abstractmethod
    def predict(self, client: int | None, images: np.ndarray) -> list[str]:
        """Class id for each image as `client` (None: the server / merged model) would answer."""

    def close(self) -> None:
        """Release processes, channels or threads the method holds (idempotent)."""
        return None

    def __enter__(self) -> Method:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_batch(name: str, images: np.ndarray, labels: list[str]) -> None:
    """Clear error for a mission batch whose images and labels disagree."""
    if np.asarray(images).ndim != 4:
        raise ValueError(f"{name}.learn: images must be (N, C, H, W), got shape {np.shape(images)}")
    if len(images) != len(labels):
        raise ValueError(f"{name}.learn: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError(f"{name}.learn: empty mission (no images)")
