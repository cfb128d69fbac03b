"""`fedrecon bench --only cluster`: replicas on one PostgreSQL beside the single SQLite server, same clients, same run.

Acknowledged class-updates/s of the same client processes (PushStream) against a single SQLite server and
against 1, 2 and 3 `fedrecon server` replicas on one PostgreSQL database (the clients given every replica's
address, balanced round robin); the CPU each acknowledged push cost each part (the replicas, PostgreSQL,
the clients) and the rate two otherwise idle cores could sustain from those (an estimate); and the latency
of a pull from a replica that did not take the push (it waits until it has applied what the client saw).
On 2 cores every part shares the CPU, so the measured rates fall with replicas; the per-part CPU says what
separate hosts would change. Starts its own throwaway PostgreSQL unless given `url`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fedrecon.benchmarks.common import percentiles
from fedrecon.benchmarks.merge import grpc_rate
from fedrecon.benchmarks.pg_cluster import PgCluster, find_bin_dir
from fedrecon.client.recon_client import ReconClient
from fedrecon.experiments.process import ServerProcess


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its reaped children and its live children (PostgreSQL's backends)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p: int | str) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

    fields = stat(pid)
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                child = stat(entry.name)
            except OSError:
                continue
            if int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
    return total / tick


class Replicas:
    """Several servers on one database, seen as one target by `grpc_rate`: a comma-joined address, summed CPU."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers
        self.address = ",".join(s.address for s in servers)

    def cpu_seconds(self) -> float:
        """CPU seconds used by every replica so far."""
        return sum(s.cpu_seconds() for s in self.servers)


def replica_rate(url: str, replicas: int, postgres: PgCluster | None, clients: int, dim: int, batch: int,
                 universe: int, seconds: float, window: int) -> dict:
    """`grpc_rate` against `replicas` servers on a fresh database, with PostgreSQL's CPU per push beside it."""
    servers = [ServerProcess(url, ["--log-level", "warning"]).start() for _ in range(replicas)]
    try:
        pg_before = tree_cpu_seconds(postgres.process.pid) if postgres is not None else 0.0
        out = grpc_rate(Replicas(servers), clients, dim, batch, universe, seconds, f"r{replicas}", window)
        if postgres is not None and out["pushes"]:
            pg_us = (tree_cpu_seconds(postgres.process.pid) - pg_before) / out["pushes"] * 1e6
            out["postgres_cpu_us_per_push"] = pg_us
            out["idle_2core_estimate_updates_per_s"] = 2e6 / (out["server_cpu_us_per_push"]
                                                              + out["client_cpu_us_per_push"] + pg_us) * batch
        return out
    finally:
        for server in servers:
            server.stop()


def cross_replica_pull_ms(url: str, pulls: int, dim: int) -> dict:
    """Push on replica A, then pull from replica B at once (B waits until it has the push): latency of that pull."""
    servers = [ServerProcess(url, ["--log-level", "warning"]).start() for _ in range(2)]
    samples, seen = [], 0
    try:
        with ReconClient(servers[0].address, "writer", state_path=None) as a, \
                ReconClient(servers[1].address, "reader", state_path=None) as b:
            rng = np.random.default_rng(0)
            for k in range(pulls):
                ack = a.push("s", [f"x{k}"], [1], rng.normal(size=(1, dim)))
                b.merger.seen_version = ack.version  # what a client that pushed on A and pulls from B has seen
                started = time.perf_counter()
                pulled = b.pull("s")
                samples.append(time.perf_counter() - started)
                seen += f"x{k}" in pulled.class_ids
    finally:
        for server in servers:
            server.stop()
    return {**percentiles(samples), "pulls_that_saw_the_push": seen}


def run(quick: bool = False, workdir: Path | None = None, url: str | None = None, clients: int = 4, dim: int = 64,
        batch: int = 64, window: int = 8) -> dict:
    """The whole comparison; a throwaway PostgreSQL (durable: fsync on) unless `url` names a database server."""
    seconds, universe = (1.5, 2_000) if quick else (8.0, 20_000)
    postgres = None
    if url is None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL (initdb, postgres) not found: install it or pass a postgresql:// URL")
        postgres = PgCluster(bin_dir, durable=True).start()
    try:
        fresh = postgres.create_database if postgres is not None else (lambda: url)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp, \
                ServerProcess(Path(tmp) / "single.db", ["--log-level", "warning"]) as single:
            results = {"clients": clients, "dim": dim, "batch": batch, "window": window, "seconds": seconds,
                       "load_average_before": os.getloadavg()[0],
                       "sqlite": grpc_rate(single, clients, dim, batch, universe, seconds, "sqlite", window)}
        for n in (1, 2, 3):
            results[f"postgres_{n}_replicas"] = replica_rate(fresh(), n, postgres, clients, dim, batch, universe,
                                                             seconds, window)
        results["cross_replica_pull"] = cross_replica_pull_ms(fresh(), 20 if quick else 100, dim)
        results["load_average_after"] = os.getloadavg()[0]
        return results
    finally:
        if postgres is not None:
            postgres.stop()
