"""Shared pieces of the reliability scripts (crash safety, fuzz, load, poisoning): server processes and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedrecon.experiments.process import FEDRECON, free_port  # noqa: F401 - re-exported for the scripts


def percentiles_ms(samples_s: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max of durations in seconds, as milliseconds."""
    if not samples_s:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3)}


def print_result(result: dict, out: Path | None = None) -> None:
    """Print the result as one JSON line (the script's last line) and optionally save it."""
    text = json.dumps(result, sort_keys=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(text, flush=True)
