"""Prototype methods: `fedrecon` (per-class means merged by the real service) and `centralized` (one table).

Both embed with the same frozen encoder. fedrecon keeps a `PrototypeMemory` per client, pushes the
deltas after each mission round and pulls the merged table; centralized adds every example to one
`PrototypeTable`. Count-weighted merging makes the two equal (up to the wire dtype's rounding).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, ClassVar

import numpy as np

from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.replica import Replica
from fedrecon.experiments.methods.base import Method, check_batch
from fedrecon.proto.prototypes import ClassRows, PrototypeTable


class EmbeddingCache:
    """Embeddings of images seen before, keyed by the image bytes (the encoder is frozen, so this is exact)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.cache: dict[bytes, np.ndarray] = {}

    def embed(self, images: np.ndarray, read: bool = True) -> np.ndarray:
        """Embed the images not cached yet (all of them when not `read`, e.g. to time it); float32 (N, dim)."""
        images = np.ascontiguousarray(images)
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in images]
        missing = [i for i, k in enumerate(keys) if not read or k not in self.cache]
        if missing:
            fresh = self.encoder.embed(images[missing])
            for i, e in zip(missing, fresh, strict=True):
                self.cache[keys[i]] = e
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, self.encoder.dim), np.float32)


class _Embedding(Method):
    """What both prototype methods share: the frozen encoder's embeddings, through the runner's caches."""

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        self.eval_cache: EmbeddingCache | None = None  # set by the runner so test images embed once per run
        self.learn_cache: EmbeddingCache | None = None  # set by the runner: training embeddings shared by runs
        self.learn_cache_read = True  # False: embed anew (the timed run) but still fill the cache
        self.embed_seconds = 0.0  # time in the encoder's forward pass while learning (reported apart)

    def _embed_learn(self, images: np.ndarray) -> np.ndarray:
        """Training images' embeddings, timed into `embed_seconds`."""
        t0 = time.perf_counter()
        if self.learn_cache is not None:
            embeddings = self.learn_cache.embed(images, read=self.learn_cache_read)
        else:
            embeddings = self.encoder.embed(images)
        self.embed_seconds += time.perf_counter() - t0
        return embeddings

    def _embed_eval(self, images: np.ndarray) -> np.ndarray:
        """Test images' embeddings (cached across methods of a run when the runner set `eval_cache`)."""
        return self.eval_cache.embed(images) if self.eval_cache is not None else self.encoder.embed(images)


class FedRecon(_Embedding):
    """Federated reconnaissance: local prototype memories, pushed to and pulled from the merge service."""

    name = "fedrecon"
    defaults: ClassVar[dict[str, Any]] = {"transport": "inproc", "dtype": "float32", "transport_config": {}}

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        transport = self.config["transport"]
        if isinstance(transport, str):
            from fedrecon.experiments.transports import make_transport

            transport = make_transport(transport, {"dtype": self.config["dtype"], "clients": self.config.get("clients"),
                                                   **self.config["transport_config"]})
            self._owns_transport = True
        else:
            self._owns_transport = False
        self.transport = transport
        self.space: str = encoder.fingerprint
        self.replicas: dict[int, Replica] = {
            c: self._replica(c) for c in range(int(self.config.get("clients") or 0))}
        self.server = Replica("evaluator", self.space)  # the evaluator's view of the merged table (not traffic)

    def _replica(self, client: int) -> Replica:
        return Replica(f"client-{client}", self.space)

    def memory(self, client: int) -> PrototypeMemory:
        """A client's prototype memory (its replica is created on first use)."""
        if client not in self.replicas:
            self.replicas[client] = self._replica(client)
        return self.replicas[client].memory

    def learn(self, client: int, images: np.ndarray, labels: list[str]) -> None:
        """Embed the mission's images and add them to the client's local sums and counts."""
        check_batch(self.name, images, labels)
        self.memory(client).add_examples(list(labels), self._embed_learn(images))

    def merge(self) -> None:
        """Every client pushes its pending deltas, then every client syncs (pulls what changed since its last pull:
        nothing is left to push), then the evaluator."""
        for c in sorted(self.replicas):
            merger = self.transport.merger(self.replicas[c].client_id)
            self.replicas[c].push(merger)
            self.bytes_up += merger.bytes_up
        for c in sorted(self.replicas):
            merger = self.transport.merger(self.replicas[c].client_id)
            self.replicas[c].sync(merger)
            self.bytes_down += merger.bytes_down
        self.server.sync(self.transport.merger(self.server.client_id))

    def predict(self, client: int | None, images: np.ndarray) -> list[str]:
        """Nearest prototype over the client's union of global and local classes (None: the server's table)."""
        if client is not None and client not in self.replicas:
            raise KeyError(f"fedrecon: client {client} has never learned or merged")
        replica = self.server if client is None else self.replicas[client]
        return replica.memory.classify(self._embed_eval(images))

    def prototypes(self, client: int | None = None) -> ClassRows:
        """The table a client (or the server) classifies with."""
        return (self.server if client is None else self.replicas[client]).memory.union()

    def close(self) -> None:
        """Close the transport if this method created it."""
        if self._owns_transport:
            self.transport.close()


class Centralized(_Embedding):
    """All data in one place: one prototype table from every example (what fedrecon must equal)."""

    name = "centralized"
    defaults: ClassVar[dict[str, Any]] = {}
    shared_after_merge = True

    def __init__(self, encoder: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(encoder, config)
        self.table = PrototypeTable()

    def learn(self, client: int, images: np.ndarray, labels: list[str]) -> None:
        """Raw images go to the centre (counted as one byte per pixel up); added to the one table."""
        check_batch(self.name, images, labels)
        self.bytes_up += int(np.asarray(images).size)
        self.table.add_examples(list(labels), self._embed_learn(images))

    def merge(self) -> None:
        """Nothing to merge: the table is already central."""

    def predict(self, client: int | None, images: np.ndarray) -> list[str]:
        """Nearest prototype in the central table (every client answers the same)."""
        return self.table.classify(self._embed_eval(images))
