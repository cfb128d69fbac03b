"""Scale: 10,000 simulated clients x 5 classes each, pushed through the real store in this process.

Each client pushes one delta per class (count, mean of its examples) over a universe of classes; the
store validates, merges and keeps per-client contributions exactly as the server does. Figures: wall
seconds, pushes/s, peak traced memory (tracemalloc) and max RSS. The reference in the same run is the
bare numpy merge of the same deltas into one `PrototypeTable` (no per-client state, no validation).
The merged result is checked against the expected totals. The Flower Simulation Engine figure (1,000
virtual clients) comes from `fedrecon.benchmarks.flower_scale` when Flower's simulation is importable.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedrecon.benchmarks.common import ratio
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.prototypes import PrototypeTable
from fedrecon.server.store import PrototypeStore


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * resource.getpagesize() / 2**20


def inproc(clients: int = 10_000, classes_per_client: int = 5, universe: int = 1_000, dim: int = 64,
           seed: int = 0) -> dict:
    """Push `clients` x `classes_per_client` deltas through an in-memory `PrototypeStore`; time and memory."""
    rng = np.random.default_rng(seed)
    ids_all = [f"class-{i:05d}" for i in range(universe)]
    plan = [rng.choice(universe, size=classes_per_client, replace=False) for _ in range(clients)]
    counts = rng.integers(1, 20, size=(clients, classes_per_client))
    means = rng.standard_normal((clients, classes_per_client, dim)).astype(np.float32).astype(np.float64)
    def push_all(store: PrototypeStore) -> float:
        start = time.perf_counter()
        for k in tqdm(range(clients), desc="scale: in-process clients", leave=False, mininterval=1.0):
            store.push(f"client-{k:05d}", 1, "space", Deltas([ids_all[i] for i in plan[k]], counts[k], means[k]))
        return time.perf_counter() - start

    rss_before = _rss_mb()
    store = PrototypeStore(None)
    seconds = push_all(store)  # timed without tracing (tracemalloc slows allocation-heavy code severalfold)
    rss_growth = _rss_mb() - rss_before
    tracemalloc.start()
    traced = PrototypeStore(None)
    push_all(traced)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    traced.close()
    table = store.tables.spaces["space"]
    expected = np.zeros(universe, np.int64)
    np.add.at(expected, np.concatenate(plan), counts.reshape(-1))
    got = np.array([table.get(c)[1] if c in table else 0 for c in ids_all])
    if not np.array_equal(got, expected) or len(store.tables.contributions) != clients:
        raise RuntimeError("scale: merged counts do not match the pushed deltas")
    store.close()

    reference = PrototypeTable(dim)
    start = time.perf_counter()
    for k in range(clients):
        reference.add([ids_all[i] for i in plan[k]], counts[k], means[k])
    ref_seconds = time.perf_counter() - start
    if not np.allclose(reference.means(reference.rows(table.class_ids)), table.means(), atol=1e-9):
        raise RuntimeError("scale: the store's merge differs from the reference merge")
    return {"inproc_clients": clients, "classes_per_client": classes_per_client, "universe": universe, "dim": dim,
            "inproc_seconds": seconds, "inproc_pushes_per_s": clients / seconds,
            "inproc_peak_traced_mb": peak / 2**20, "rss_growth_mb": rss_growth,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "numpy_reference_seconds": ref_seconds, "ratio_store_to_numpy": ratio(seconds, ref_seconds)}


def flower(clients: int = 1_000, timeout: float = 300.0) -> dict:
    """The Flower Simulation Engine run (`fedrecon.benchmarks.flower_scale`) in a subprocess, if available."""
    try:
        import flwr.simulation  # noqa: F401

        import fedrecon.experiments.flower_app  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import problem means "not available"
        return {"available": False, "reason": f"Flower simulation not importable: {error}"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flower.json"
        # a random Conv4 costs the same as trained weights; the glyph cache stays in the temporary folder
        cmd = [sys.executable, "-m", "fedrecon.benchmarks.flower_scale", "--clients", str(clients), "--out", str(out),
               "--encoder", "random", "--cache-dir", str(Path(tmp) / "cache")]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"available": False, "reason": f"{clients} clients did not finish within {timeout:.0f} s"}
        if done.returncode != 0 or not out.exists():
            return {"available": False, "reason": f"flower_scale exited {done.returncode}: {done.stderr[-500:]}"}
        result = json.loads(out.read_text())
    result.pop("curve", None)
    return {"available": True, **result}


def run(quick: bool = False, flower_clients: int | None = None, flower_timeout: float = 300.0) -> dict:
    """Scale figures (keys `scale.*` in bench.json); Flower only in the full run."""
    out = inproc(clients=1_000 if quick else 10_000)
    if quick or not flower_clients:
        out["flower"] = {"available": False, "reason": "skipped (quick run or --flower-clients 0)"}
    else:
        out["flower"] = flower(flower_clients, flower_timeout)
    return out
