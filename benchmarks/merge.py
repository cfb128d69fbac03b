"""Merge throughput: acknowledged durable class-updates/s from 1, 8, 32 client processes over loopback gRPC.

Next to it, on the same updates and in the same run: the transport ceiling (a gRPC server whose Push does
nothing, `noop_server`, fed by the same client processes: `durable_vs_transport_ceiling`), the same clients
pushing their backlog on PushStream calls (`durable_stream_vs_transport_ceiling`, against the same unary
ceiling, and against a no-op PushStream), the in-memory
numpy merge (`PrototypeTable.add`), the store called directly (in memory and durable, no gRPC), and the gRPC
server with an in-memory store (transport + service cost without SQLite). Each ratio says what one layer costs.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedrecon.benchmarks.common import percentiles, ratio
from fedrecon.benchmarks.push_worker import requests_for, run_worker
from fedrecon.experiments.process import ServerProcess
from fedrecon.proto import codec
from fedrecon.proto.prototypes import PrototypeTable
from fedrecon.server.store import PrototypeStore

SPACE = "bench-space"
STREAM_WINDOW = 8  # pushes a PushStream client keeps unanswered (a client with a backlog)


def _decoded(dim: int, batch: int, universe: int, clients: int) -> list[tuple[str, codec.Deltas]]:
    """The pushes the client processes send, decoded as the server sees them."""
    out = []
    for k in range(clients):
        for request in requests_for(f"client-{k}", SPACE, dim, batch, universe, seed=k):
            out.append((request.client_id, codec.decode_deltas(request.deltas)))
    return out


def numpy_merge_rate(dim: int, batch: int, universe: int, seconds: float) -> float:
    """Class-updates/s of the bare in-memory merge (`PrototypeTable.add`) on the benchmark's pushes."""
    pushes = _decoded(dim, batch, universe, 8)
    table = PrototypeTable(dim)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _, d in pushes:
            table.add(d.class_ids, d.counts, d.means, n)
            n += 1
    return n * batch / (time.perf_counter() - start)


def store_rate(path: Path | None, dim: int, batch: int, universe: int, seconds: float,
               threads: int) -> tuple[float, float | None]:
    """Class-updates/s of `PrototypeStore.push` called directly by `threads` threads (no gRPC), and the
    mean number of pushes per group commit (None in memory)."""
    pushes = _decoded(dim, batch, universe, threads)
    store = PrototypeStore(path)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def pusher(k: int) -> None:
        mine = [d for cid, d in pushes if cid == f"client-{k}"]
        seq = 0
        while time.perf_counter() < stop:
            d = mine[seq % len(mine)]
            seq += 1
            store.push(f"client-{k}", seq, SPACE, d)
        counts[k] = seq

    start = time.perf_counter()
    workers = [threading.Thread(target=pusher, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    store.close()
    per_commit = store.committed_operations / store.commits if store.commits else None
    return sum(counts) * batch / elapsed, per_commit


def _context() -> mp.context.BaseContext:
    """Worker processes come from a fork server that has imported grpc and numpy once (but opened no
    channel), so starting 32 clients costs a fork each instead of a fresh interpreter's imports."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fedrecon.benchmarks.push_worker"])
    return ctx


def grpc_rate(server: ServerProcess, clients: int, dim: int, batch: int, universe: int, seconds: float,
              tag: str, window: int = 0) -> dict:
    """Acknowledged class-updates/s from `clients` processes pushing concurrently to the server.

    `window` 0: unary pushes, one at a time per client; N: PushStream with up to N unanswered per client.
    Also the CPU each acknowledged push cost the server process and the client processes, and from
    those the rate two otherwise idle cores could sustain (an estimate: 2 / CPU seconds per push).
    """
    address = server.address
    ctx = _context()
    go, results = ctx.Event(), ctx.Queue()
    readies, procs = [], []
    for k in range(clients):
        ready = ctx.Event()
        p = ctx.Process(target=run_worker, args=(address, f"{tag}-client-{k}", SPACE, dim, batch, universe,
                                                 seconds, k, ready, go, results, window), daemon=True)
        p.start()
        readies.append(ready)
        procs.append(p)
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("a benchmark client process did not connect within 120 s")
    server_cpu = server.cpu_seconds()
    go.set()
    rows = [results.get(timeout=seconds + 120) for _ in range(clients)]
    server_cpu = server.cpu_seconds() - server_cpu
    for p in procs:
        p.join(30)
    errors = [r[5] for r in rows if r[5]]
    if errors:
        raise RuntimeError(f"benchmark clients failed: {errors[:3]}")
    pushes = sum(r[1] for r in rows)
    elapsed = max(r[3] for r in rows) - min(r[2] for r in rows)
    lat = percentiles([x for r in rows for x in r[4]])
    server_us = server_cpu / pushes * 1e6 if pushes else float("nan")
    client_us = sum(r[6] for r in rows) / pushes * 1e6 if pushes else float("nan")
    return {"clients": clients, "pushes": pushes, "seconds": elapsed, "updates_per_s": pushes * batch / elapsed,
            "pushes_per_s": pushes / elapsed, "push_latency_p50_ms": lat["p50_ms"],
            "push_latency_p99_ms": lat["p99_ms"], "server_cpu_us_per_push": server_us,
            "client_cpu_us_per_push": client_us,
            "idle_2core_estimate_updates_per_s": 2e6 / (server_us + client_us) * batch if pushes else None}


def _median_ratio(rounds: list[dict], key: str) -> float:
    """The median over rounds of a ratio taken within each round."""
    return statistics.median(r[key] for r in rounds)


def run(quick: bool = False, workdir: Path | None = None, dim: int = 64, batch: int = 64,
        client_counts: tuple[int, ...] | None = None, seconds: float | None = None,
        synchronous: str = "FULL", rounds: int | None = None) -> dict:
    """All merge-throughput figures as a flat dict (keys `merge.*` in bench.json)."""
    client_counts = client_counts or ((8,) if quick else (1, 8, 32))
    seconds = seconds or (2.0 if quick else 6.0)
    short = min(seconds, 1.0 if quick else 2.0)
    universe = 4096
    out: dict = {"dim": dim, "batch": batch, "seconds_per_run": seconds, "synchronous": synchronous}
    out["inmemory_updates_per_s"] = numpy_merge_rate(dim, batch, universe, short)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out["store_direct_memory_updates_per_s"] = store_rate(None, dim, batch, universe, short, 8)[0]
        rate, per_commit = store_rate(Path(tmp) / "direct.db", dim, batch, universe, short, 8)
        out["store_direct_durable_updates_per_s_8_threads"] = rate
        out["store_direct_durable_pushes_per_commit"] = per_commit
        runs: dict = {}
        ceiling_clients = 8 if 8 in client_counts else client_counts[-1]
        rounds = rounds or (1 if quick else 3)
        # the transport's own ceiling (a server whose Push does nothing, fed by the same client processes) and
        # the durable server, unary and with a backlog on PushStream calls, alternated round by round: this
        # machine's speed drifts by a third, and the ratios are taken within each round
        per_round: list[dict] = []
        for k in range(rounds):
            measured = {}
            with ServerProcess(command=[sys.executable, "-m", "fedrecon.benchmarks.noop_server"]) as server:
                measured["noop"] = grpc_rate(server, ceiling_clients, dim, batch, universe, seconds, f"noop{k}")
                measured["noop_stream"] = grpc_rate(server, ceiling_clients, dim, batch, universe, seconds,
                                                    f"noops{k}", STREAM_WINDOW)
            with ServerProcess(Path(tmp) / f"round-{k}-unary.db", ["--synchronous", synchronous]) as server:
                measured["durable"] = grpc_rate(server, ceiling_clients, dim, batch, universe, seconds, f"dur{k}")
            with ServerProcess(Path(tmp) / f"round-{k}-stream.db", ["--synchronous", synchronous]) as server:
                measured["durable_stream"] = grpc_rate(server, ceiling_clients, dim, batch, universe, seconds,
                                                       f"durs{k}", STREAM_WINDOW)
            per_round.append(measured)
        for kind in ("noop", "noop_stream", "durable", "durable_stream"):  # the run with the median rate
            ordered = sorted((m[kind] for m in per_round), key=lambda r: r["updates_per_s"])
            runs[f"{kind}_{ceiling_clients}"] = ordered[(len(ordered) - 1) // 2]
        out["rounds"] = rounds
        out["round_ratios"] = [{**{f"{kind}_updates_per_s": m[kind]["updates_per_s"] for kind in m},
                                "durable_vs_transport_ceiling": ratio(m["durable"]["updates_per_s"],
                                                                      m["noop"]["updates_per_s"]),
                                "durable_stream_vs_transport_ceiling": ratio(m["durable_stream"]["updates_per_s"],
                                                                             m["noop"]["updates_per_s"])}
                               for m in per_round]
        if not quick:  # the transport plus the service: the same server with an in-memory store
            with ServerProcess() as server:
                runs["memory_8"] = grpc_rate(server, 8, dim, batch, universe, seconds, "mem")
        for n in client_counts:
            if n == ceiling_clients:
                continue  # measured in the rounds above
            with ServerProcess(Path(tmp) / f"server-{n}.db", ["--synchronous", synchronous]) as server:
                runs[f"durable_{n}"] = grpc_rate(server, n, dim, batch, universe, seconds, f"dur{n}")
        if not quick and synchronous == "FULL":  # what the per-commit fsync costs: NORMAL survives crashes only
            with ServerProcess(Path(tmp) / "server-normal.db", ["--synchronous", "NORMAL"]) as server:
                runs["normal_8"] = grpc_rate(server, 8, dim, batch, universe, seconds, "normal")
    for n in client_counts:
        r = runs[f"durable_{n}"]
        out[f"durable_updates_per_s_{n}_clients"] = r["updates_per_s"]
        out[f"durable_push_p50_ms_{n}_clients"] = r["push_latency_p50_ms"]
        out[f"durable_push_p99_ms_{n}_clients"] = r["push_latency_p99_ms"]
        out[f"durable_server_cpu_us_per_push_{n}_clients"] = r["server_cpu_us_per_push"]
        out[f"durable_client_cpu_us_per_push_{n}_clients"] = r["client_cpu_us_per_push"]
        out[f"durable_idle_2core_estimate_updates_per_s_{n}_clients"] = r["idle_2core_estimate_updates_per_s"]
    key8 = f"durable_updates_per_s_{ceiling_clients}_clients"
    out["ratio_durable_8_to_inmemory"] = ratio(out[key8], out["inmemory_updates_per_s"])
    noop = runs[f"noop_{ceiling_clients}"]
    out[f"transport_ceiling_updates_per_s_{ceiling_clients}_clients"] = noop["updates_per_s"]
    out[f"transport_ceiling_server_cpu_us_per_push_{ceiling_clients}_clients"] = noop["server_cpu_us_per_push"]
    out["durable_vs_transport_ceiling"] = _median_ratio(out["round_ratios"], "durable_vs_transport_ceiling")
    stream, noop_stream = runs[f"durable_stream_{ceiling_clients}"], runs[f"noop_stream_{ceiling_clients}"]
    out["stream_window"] = STREAM_WINDOW
    out[f"durable_stream_updates_per_s_{ceiling_clients}_clients"] = stream["updates_per_s"]
    out[f"durable_stream_push_p50_ms_{ceiling_clients}_clients"] = stream["push_latency_p50_ms"]
    out[f"durable_stream_server_cpu_us_per_push_{ceiling_clients}_clients"] = stream["server_cpu_us_per_push"]
    out[f"transport_ceiling_stream_updates_per_s_{ceiling_clients}_clients"] = noop_stream["updates_per_s"]
    out["durable_stream_vs_transport_ceiling"] = _median_ratio(out["round_ratios"],
                                                                "durable_stream_vs_transport_ceiling")
    out["durable_stream_vs_stream_ceiling"] = ratio(stream["updates_per_s"], noop_stream["updates_per_s"])
    if "normal_8" in runs:
        out["sync_normal_updates_per_s_8_clients"] = runs["normal_8"]["updates_per_s"]
    if "memory_8" in runs:
        out["memory_server_updates_per_s_8_clients"] = runs["memory_8"]["updates_per_s"]
        out["ratio_durable_8_to_memory_server"] = ratio(out[key8], out["memory_server_updates_per_s_8_clients"])
    out["ratio_durable_8_to_target_50k"] = ratio(out[key8], 50_000)
    out["runs"] = runs
    return out
