"""The content digest of a push: part of the contract, computed alike by the server (to check a retry) and the
client (to tell which of its pushes the server holds, after a state or a server was restored from a backup).

The digest covers the space and the push's log encoding (`pack_operation`): JSON class ids, int64 counts and the
means as `pack_means` packs them (float32 when exact, else float64), so it does not depend on the seq, and equal
content pushed in any wire dtype that decodes to the same values gives an equal digest.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence

import numpy as np

from fedrecon.proto.codec import DTYPES

DIGEST_PREFIX = "2:"  # digests of the current kind; unprefixed ones were written by older servers
NARROW_FLOATS = tuple(d for d in DTYPES.values() if d.itemsize <= 4)  # wire dtypes exact in float32


def pack_means(means: np.ndarray) -> bytes:
    """Log bytes of means: float32 when every value survives the round trip exactly, else float64.

    Pushes usually arrive as float32 (or float16/bfloat16) on the wire, so their means fit float32
    exactly; logging them at 4 bytes halves the write volume of every commit and loses nothing.
    Means still in a wire dtype of 32 bits or fewer are float32-exact by construction (no check).
    """
    if means.dtype in NARROW_FLOATS:
        return np.ascontiguousarray(means, dtype="<f4").tobytes()
    packed = means.astype("<f4")
    if np.array_equal(packed, means):
        return packed.tobytes()
    return means.astype("<f8").tobytes()


def pack_operation(class_ids: list[str], counts: np.ndarray, means: np.ndarray) -> tuple[str, bytes, bytes]:
    """The log columns of a push's content: JSON class ids, int64 counts, `pack_means` means."""
    return json.dumps(class_ids), np.ascontiguousarray(counts, dtype="<i8").tobytes(), pack_means(means)


def content_digest(space: str, packed: tuple[str, bytes, bytes]) -> str:
    """Digest of a push's content, a retry must match it: blake2b of the space and the content's log
    encoding (`pack_operation`), so equal content gives an equal digest and the log row alone recomputes it."""
    h = hashlib.blake2b(digest_size=16)
    parts = (space.encode(), packed[0].encode(), packed[1], packed[2])
    h.update(struct.pack("<4Q", *map(len, parts)))
    for part in parts:
        h.update(part)  # hashlib lets other threads run while it hashes a large part
    return DIGEST_PREFIX + h.hexdigest()


def push_digest(space: str, class_ids: Sequence[str], counts: np.ndarray | Sequence[int], means: np.ndarray) -> str:
    """The digest the server records for a push of these decoded wire values (narrow floats widened as it does)."""
    wire = np.asarray(means)
    if wire.dtype.kind != "f" or wire.dtype.itemsize < 4:
        wire = wire.astype(np.float32 if wire.dtype.itemsize < 4 else np.float64)
    return content_digest(space, pack_operation(list(class_ids), np.asarray(counts, dtype=np.int64), wire))
