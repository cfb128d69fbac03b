"""The payloads both sides pass around: per-class deltas, a versioned snapshot of merged classes, a push's ack.

One type each, shared by the codec, the store, the client library, the client memory and the experiments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Deltas(NamedTuple):
    """Per-class deltas: for `class_ids[i]`, `counts[i]` examples whose mean is `means[i]` (int64, float64 n x dim).

    A named tuple, so it also unpacks as `class_ids, counts, means`.
    """

    class_ids: list[str]
    counts: np.ndarray
    means: np.ndarray

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.means.shape[1]) if self.means.ndim == 2 else 0


@dataclass(frozen=True)
class Snapshot:
    """Merged (count, mean) of the classes of `space` changed since a version, current to `version`.

    A count of 0 means the class was removed. A non-empty `next_page_token` marks one page of a paged pull.
    `epoch` names the server epoch of `version` (a client's next pull names it); `reset` marks a full pull made
    because the client's `since` was not in the store's history: it replaces the client's table.
    """

    space: str
    version: int
    class_ids: list[str]
    counts: np.ndarray
    means: np.ndarray
    next_page_token: str = ""
    epoch: str = ""
    reset: bool = False

    @property
    def deltas(self) -> Deltas:
        """The snapshot's classes as `Deltas` (what the codec encodes)."""
        return Deltas(self.class_ids, self.counts, self.means)


@dataclass(frozen=True)
class PushAck:
    """A store's acknowledgement of a push: its seq, the global version after it, its classes, whether a retry."""

    seq: int
    version: int
    classes: int
    duplicate: bool = False

    def to_dict(self) -> dict:
        """As a JSON-ready dict."""
        return {"seq": self.seq, "version": self.version, "classes": self.classes, "duplicate": self.duplicate}
