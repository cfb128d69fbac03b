"""Client update cost: milliseconds to learn one class (embed 15 shots + update the prototype memory) on CPU.

In the same run and on the same classes: one `lower` update (fine-tune the Conv4 classifier on the
mission) and one `icarl` update (fine-tune with exemplars and distillation, then herding), both from
`fedrecon.experiments.methods` with their default configs, after the same warm-up classes. The ratio
`speedup_vs_icarl` = icarl ms / fedrecon ms per class (target >= 100).
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from fedrecon.benchmarks.common import percentiles, ratio
from fedrecon.benchmarks.encoders import benchmark_encoder, glyph_images


def _time_method(method, warmup: list[str], timed: list[str], images: dict[str, np.ndarray],  # noqa: ANN001
                 shots: int) -> list[float]:
    """Seconds of each timed `learn` call (one class of `shots` images each), after learning `warmup`."""
    for cid in warmup:
        method.learn(0, images[cid][:shots], [cid] * shots)
    out = []
    for cid in timed:
        start = time.perf_counter()
        method.learn(0, images[cid][:shots], [cid] * shots)
        out.append(time.perf_counter() - start)
    return out


def run(quick: bool = False, shots: int = 15, warmup_classes: int | None = None,
        timed_classes: int | None = None, threads: int = 1) -> dict:
    """Per-class learning cost of fedrecon, lower and icarl (keys `client.*` in bench.json).

    Every method runs with `threads` torch threads (default 1: on a shared 2-core machine more
    intra-op threads spin against each other and make every method several times slower).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(quick, shots, warmup_classes, timed_classes)
    finally:
        torch.set_num_threads(previous)


def _run(quick: bool, shots: int, warmup_classes: int | None, timed_classes: int | None) -> dict:
    import torch

    from fedrecon.client.learner import Learner

    warmup_classes = warmup_classes or (3 if quick else 20)
    timed_classes = timed_classes or (2 if quick else 8)
    encoder, described = benchmark_encoder("omniglot")
    ids, images = glyph_images(warmup_classes + timed_classes, drawings=max(20, shots))
    warmup, timed = ids[:warmup_classes], ids[warmup_classes:]
    out: dict = {"shots": shots, "warmup_classes": warmup_classes, "timed_classes": timed_classes,
                 "encoder": described, "torch_threads": torch.get_num_threads(), "images": "glyphs 28x28"}

    learner = Learner(encoder)
    for cid in warmup:
        learner.learn(images[cid][:shots], [cid] * shots)
    fed = []
    for _ in range(3):  # fedrecon is cheap: repeat the timed classes for a stable median
        for cid in timed:
            start = time.perf_counter()
            learner.learn(images[cid][:shots], [cid] * shots)
            fed.append(time.perf_counter() - start)
    out["fedrecon"] = percentiles(fed)
    out["ms_per_class"] = out["fedrecon"]["p50_ms"]

    try:
        from fedrecon.experiments.methods import METHODS
    except ImportError as error:
        out["baselines"] = {"skipped": f"fedrecon.experiments.methods not importable: {error}"}
        return out
    for name in tqdm(("lower", "icarl"), desc="client cost: baselines", leave=False):
        method = METHODS[name](encoder, {"seed": 0})
        try:
            out[name] = percentiles(_time_method(method, warmup, timed, images, shots))
            out[name]["config"] = dict(method.config)
        finally:
            method.close()
    out["lower_ms_per_class"] = out["lower"]["p50_ms"]
    out["icarl_ms_per_class"] = out["icarl"]["p50_ms"]
    out["speedup_vs_lower"] = ratio(out["lower_ms_per_class"], out["ms_per_class"])
    out["speedup_vs_icarl"] = ratio(out["icarl_ms_per_class"], out["ms_per_class"])
    return out
