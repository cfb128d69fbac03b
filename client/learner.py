"""A client's local learner: embed labelled images with the frozen encoder into prototype memory.

Learning a class is adding its embeddings to running float64 sums and counts (`PrototypeMemory`);
prediction is nearest prototype over every class the client knows, local or pulled from the server.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrecon.client.encoder import Encoder
from fedrecon.client.memory import PrototypeMemory


class LocalLearner:
    """Encoder + prototype memory: `learn` from (images, labels), `predict`, export `pending` deltas."""

    def __init__(self, encoder: Encoder, memory: PrototypeMemory | None = None, batch_size: int = 256) -> None:
        self.encoder = encoder
        self.memory = memory if memory is not None else PrototypeMemory(encoder.dim)
        if self.memory.dim not in (None, encoder.dim):
            raise ValueError(f"memory dim {self.memory.dim} does not match the encoder's {encoder.dim}")
        self.batch_size = batch_size

    @property
    def space(self) -> str:
        """The embedding space (encoder fingerprint) every push from this learner must name."""
        return self.encoder.fingerprint

    def learn(self, images: np.ndarray, class_ids: Sequence[str]) -> None:
        """Embed `images` (N, C, H, W) in batches and add them to their classes' local sums."""
        if len(images) != len(class_ids):
            raise ValueError(f"learn: {len(images)} images but {len(class_ids)} class ids")
        if len(images):
            self.memory.add_examples(list(class_ids), self.encoder.embed(images, self.batch_size))

    def predict(self, images: np.ndarray) -> list[str]:
        """Nearest-prototype class id of each image over every known class."""
        return self.memory.classify(self.encoder.embed(images, self.batch_size))

    def accuracy(self, images: np.ndarray, class_ids: Sequence[str]) -> float:
        """Fraction of `images` predicted as their `class_ids`."""
        if len(images) == 0:
            raise ValueError("accuracy: no images")
        return float(np.mean([p == t for p, t in zip(self.predict(images), class_ids, strict=True)]))

    def pending(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Deltas not yet pushed: (class_ids, counts, means)."""
        return self.memory.pending()
