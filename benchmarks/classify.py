"""Classification cost: nearest prototype over 600 / 10k / 100k classes (d=64) for one batch of queries.

The reference in the same run is embedding that query batch with the Conv4 (what a client pays anyway
before classifying), so the ratio says how much the prototype search adds to it.
"""

from __future__ import annotations

import numpy as np

from fedrecon.benchmarks.common import percentiles, ratio, time_repeats
from fedrecon.benchmarks.encoders import benchmark_encoder
from fedrecon.proto.prototypes import PrototypeTable


def run(quick: bool = False, dim: int = 64, batch: int = 100, sizes: tuple[int, ...] | None = None) -> dict:
    """Nearest-prototype time per query batch (keys `classify.*` in bench.json)."""
    import torch

    sizes = sizes or ((600, 10_000) if quick else (600, 10_000, 100_000))
    repeats = 5 if quick else 20
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((batch, dim)).astype(np.float32)
    out: dict = {"dim": dim, "query_batch": batch, "sizes": list(sizes)}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder, described = benchmark_encoder("omniglot")
        images = rng.random((batch, 1, 28, 28), dtype=np.float32)
        embed = percentiles(time_repeats(lambda: encoder.embed(images), repeats))
    finally:
        torch.set_num_threads(previous)
    out["embed_batch_p50_ms"] = embed["p50_ms"]
    out["encoder"] = described
    for n in sizes:
        table = PrototypeTable(dim, capacity=n)
        table.add([f"class-{i:06d}" for i in range(n)], np.ones(n, np.int64), rng.standard_normal((n, dim)))
        r = percentiles(time_repeats(lambda t=table: t.classify(queries), max(3, repeats // (1 + n // 20_000))))
        label = f"{n // 1000}k" if n >= 1000 else str(n)
        out[f"batch_p50_ms_{label}"] = r["p50_ms"]
        out[f"per_query_us_{label}"] = r["p50_ms"] * 1e3 / batch
        out[f"ratio_to_embed_{label}"] = ratio(r["p50_ms"], embed["p50_ms"])
    return out
