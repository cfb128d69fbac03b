"""Sync latency: full pulls of 1k / 10k / 100k classes (d=64) and incremental pulls of 10 changed classes.

A real `fedrecon server --memory` process is filled by pushes, then a `ReconClient` in this process
pulls; p50/p99 over repeats. The reference in the same run is the store's own pull (no gRPC, no codec)
of the same table in this process, so the ratio says what the transport and codec add.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from fedrecon.benchmarks.common import percentiles, ratio
from fedrecon.client.recon_client import ReconClient
from fedrecon.experiments.process import ServerProcess
from fedrecon.proto.payloads import Deltas
from fedrecon.server.store import PrototypeStore

PUSH_CHUNK = 4096


def _fill(client: ReconClient, store: PrototypeStore, space: str, n: int, dim: int, rng: np.random.Generator,
          seq: list[int]) -> None:
    """Push `n` classes to the server (and, for the reference, to an in-process store)."""
    for start in range(0, n, PUSH_CHUNK):
        ids = [f"class-{i:06d}" for i in range(start, min(n, start + PUSH_CHUNK))]
        counts = rng.integers(1, 20, size=len(ids))
        means = rng.standard_normal((len(ids), dim)).astype(np.float32)
        client.push(space, ids, counts, means)
        seq[0] += 1
        store.push("filler", seq[0], space, Deltas(ids, counts, means.astype(np.float64)))


def run(quick: bool = False, dim: int = 64, sizes: tuple[int, ...] | None = None, repeats: int | None = None) -> dict:
    """Pull latencies (keys `pull.*` in bench.json)."""
    sizes = sizes or ((1_000, 10_000) if quick else (1_000, 10_000, 100_000))
    repeats = repeats or (15 if quick else 40)
    rng = np.random.default_rng(0)
    out: dict = {"dim": dim, "repeats": repeats, "sizes": list(sizes)}
    store = PrototypeStore(None)
    seq = [0]
    with ServerProcess() as server, ReconClient(server.address, "filler", timeout=120) as pusher, \
            ReconClient(server.address, "reader", timeout=120) as reader:
        for n in tqdm(sizes, desc="sync latency", leave=False):
            space = f"space-{n}"
            _fill(pusher, store, space, n, dim, rng, seq)
            reps = max(5, repeats // 4) if n >= 100_000 else repeats
            full, client_cpu = [], []
            reader.pull(space, since=0)  # warm-up, untimed
            server_cpu = server.cpu_seconds()
            for _ in range(reps):
                start, cpu = time.perf_counter(), time.process_time()
                pulled = reader.pull(space, since=0)
                full.append(time.perf_counter() - start)
                client_cpu.append(time.process_time() - cpu)
            server_cpu = server.cpu_seconds() - server_cpu
            if len(pulled.class_ids) != n:
                raise RuntimeError(f"full pull returned {len(pulled.class_ids)} classes, expected {n}")
            reference = []
            for _ in range(reps + 1):
                start = time.perf_counter()
                store.pull(space, 0)
                reference.append(time.perf_counter() - start)
            incremental = []
            for _ in range(reps):
                version = reader.pull(space).version
                ids = [f"class-{i:06d}" for i in rng.choice(n, size=10, replace=False)]
                pusher.push(space, ids, np.ones(10, np.int64), rng.standard_normal((10, dim)).astype(np.float32))
                start = time.perf_counter()
                changed = reader.pull(space, since=version)
                incremental.append(time.perf_counter() - start)
                if len(changed.class_ids) != 10:
                    raise RuntimeError(f"incremental pull returned {len(changed.class_ids)} classes, expected 10")
            f, r, i = percentiles(full), percentiles(reference[1:]), percentiles(incremental)
            label = f"{n // 1000}k"
            out[f"full_{label}_p50_ms"] = f["p50_ms"]
            out[f"full_{label}_p99_ms"] = f["p99_ms"]
            # CPU per full pull (server process, and this client process): what an idle machine would need
            out[f"full_{label}_server_cpu_ms"] = server_cpu / reps * 1e3
            out[f"full_{label}_client_cpu_ms"] = float(np.median(client_cpu)) * 1e3
            out[f"store_full_{label}_p50_ms"] = r["p50_ms"]
            out[f"ratio_full_{label}_to_store"] = ratio(f["p50_ms"], r["p50_ms"])
            out[f"incremental10_{label}_p50_ms"] = i["p50_ms"]
            out[f"incremental10_{label}_p99_ms"] = i["p99_ms"]
            out[f"ratio_full_to_incremental_{label}"] = ratio(f["p50_ms"], i["p50_ms"])
    if "full_10k_p50_ms" in out:
        out["ratio_full_10k_to_target_50ms"] = ratio(out["full_10k_p50_ms"], 50.0)
    store.close()
    return out
