"""Shared helpers of the benchmarks: timers, percentiles, the machine description, a server process."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def percentiles(samples_s: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p99 / mean of durations given in seconds, as milliseconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"), "n": 0}
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": int(ms.size)}


def time_repeats(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of fn (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is zero or missing."""
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


def machine() -> dict:
    """Where the figures were measured: cores, CPU model, load, Python, numpy, torch, grpc versions."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "grpc", "flwr"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not reported
            versions[name] = None
    return {"nproc": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "loadavg_at_start": list(os.getloadavg()), **versions}
