"""vs FedAvg: bytes moved per merge for the same missions, Conv4 weights against per-class prototypes.

A round: every client learns a mission of `ways` new classes, then one merge. FedAvg moves the whole
Conv4 (111,936 float32 parameters, BatchNorm statistics not even counted) up and down per client;
fedrecon pushes the mission's deltas and pulls the classes the others changed. Prototype sizes are
serialized messages (`PushRequest` / `PullReply`), so ids, counts and framing are all counted.
"""

from __future__ import annotations

import numpy as np

from fedrecon.benchmarks.common import ratio
from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb


def conv4_parameters() -> int:
    """Trainable parameters of the Conv4 backbone (convolutions + BatchNorm affine)."""
    from fedrecon.client.encoder import Conv4

    return int(sum(p.numel() for p in Conv4(1).parameters()))


def run(quick: bool = False, clients: int = 10, ways: int = 5, dim: int = 64, dtype: str = "float32") -> dict:
    """Bytes per merge for both (keys `fedavg.*` in bench.json)."""
    rng = np.random.default_rng(0)
    params = conv4_parameters()
    fedavg_per_client = 2 * params * 4  # weights up + averaged weights down, float32
    space = "conv4-0123456789abcdef"
    up = down = 0
    for k in range(clients):
        ids = [f"Alphabet_{k:02d}/character{j + 1:02d}" for j in range(ways)]
        deltas = codec.encode_deltas(Deltas(ids, rng.integers(1, 20, ways), rng.standard_normal((ways, dim))), dtype)
        up += pb.PushRequest(client_id=f"client-{k:04d}", space=space, seq=1, deltas=deltas).ByteSize()
    others = [f"Alphabet_{k:02d}/character{j + 1:02d}" for k in range(1, clients) for j in range(ways)]
    reply = pb.PullReply(space=space, version=clients, classes=codec.encode_deltas(
        Deltas(others, rng.integers(1, 20, len(others)), rng.standard_normal((len(others), dim))), dtype))
    down = reply.ByteSize() * clients  # every client pulls what the other clients added this round
    proto_per_merge = up + down
    fedavg_per_merge = fedavg_per_client * clients
    return {"clients": clients, "ways": ways, "dim": dim, "dtype": dtype, "conv4_parameters": params,
            "fedavg_bytes_per_merge": fedavg_per_merge, "prototype_bytes_per_merge": proto_per_merge,
            "prototype_bytes_up": up, "prototype_bytes_down": down,
            "bytes_ratio": ratio(fedavg_per_merge, proto_per_merge)}
