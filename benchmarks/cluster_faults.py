"""Cluster faults: client processes push through several replicas on one PostgreSQL while replicas are SIGKILLed.

Run: python -m fedrecon.benchmarks.cluster_faults --db postgresql://USER:PASSWORD@HOST/DB --seconds 30

`--replicas` servers serve the database, each on a fixed port. Each client process (the crash_safety worker)
is given every address: its client balances over them and, when one dies, goes on on another with the same
push numbers. Every `--kill-every` seconds (jittered) a random replica is SIGKILLed and started again on its
port (it loads the checkpoint and the log kept in the database). With `--pg-data` the database server itself is
crash-stopped and started again half-way (`pg_ctl restart -m immediate`). At the end a store opened on the database
(one more replica) is compared, exactly, with what the clients' acknowledged pushes add up to. Prints JSON:
`acked`, `lost` (acknowledged, not stored), `doubled` (counted twice), `mismatched` (classes whose count or
sum differ), `longest_stall_s` (the longest time one client went without an acknowledgement) and the kills.
`--follow-latency N` instead measures how long after a commit on one replica another has applied it (N pushes).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedrecon.benchmarks.crash_safety import SPACE, expected_tables, read_acks
from fedrecon.benchmarks.harness import free_port, percentiles_ms, print_result
from fedrecon.experiments.process import ServerProcess


def start_clients(addresses: str, workdir: Path, clients: int, pool: int, dim: int, stream: int) -> list:
    """The client processes (crash_safety workers given every replica's address)."""
    return [subprocess.Popen([sys.executable, "-m", "fedrecon.benchmarks.crash_safety", "--worker", "--index", str(c),
                              "--address", addresses, "--state", str(workdir / f"state{c}.json"),
                              "--acks", str(workdir / f"acks{c}.txt"), "--stop", str(workdir / "stop"),
                              "--pool", str(pool), "--dim", str(dim), "--stream", str(stream)])
            for c in range(clients)]


class Stalls:
    """The longest time any client's ack file did not grow, polled every 20 ms by a thread of its own (the main
    loop blocks while a replica restarts)."""

    def __init__(self, workdir: Path, clients: int) -> None:
        self.paths = [workdir / f"acks{c}.txt" for c in range(clients)]
        self.sizes = [0] * clients
        self.since = [time.monotonic()] * clients
        self.longest = 0.0
        self.started = [False] * clients
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stalls:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.poll()

    def poll(self) -> None:
        now = time.monotonic()
        for i, path in enumerate(self.paths):
            size = path.stat().st_size if path.exists() else 0
            if size != self.sizes[i]:
                if self.started[i]:  # from the first ack on: start-up is not a stall
                    self.longest = max(self.longest, now - self.since[i])
                self.sizes[i], self.since[i], self.started[i] = size, now, True


def verify(url: str, workdir: Path, clients: int, pool: int, dim: int) -> dict:
    """Open the database as one more store and compare it exactly with the acknowledged pushes."""
    from fedrecon.server.store import PrototypeStore

    acked = {c: read_acks(workdir / f"acks{c}.txt") for c in range(clients)}
    with PrototypeStore(url) as store:
        stored = {c: store.client_record(f"client{c}").last_seq for c in range(clients)}
        per_client, merged = expected_tables(stored, pool, dim)
        doubled = mismatched = 0
        table = store.tables.spaces.get(SPACE)
        for cid, (count, total) in merged.items():
            row = table.index.get(cid) if table is not None else None
            got_count, got_sum = (int(table.counts[row]), table.sums[row]) if row is not None else (0, np.zeros(dim))
            doubled += got_count > count
            mismatched += got_count != count or not np.array_equal(got_sum, total)
        version = store.version
    return {"acked": sum(acked.values()), "stored": sum(stored.values()),
            "lost": sum(max(0, acked[c] - stored[c]) for c in range(clients)),
            "unacknowledged_applied": sum(max(0, stored[c] - acked[c]) for c in range(clients)),
            "doubled": int(doubled), "mismatched": int(mismatched), "version": version,
            "one_version_per_push": version == sum(stored.values())}


def run(url: str, seconds: float, replicas: int = 3, clients: int = 4, kill_every: float = 3.0, pool: int = 40,
        dim: int = 8, stream: int = 4, checkpoint_every: int = 50, seed: int = 0,
        restart_db: Callable[[], None] | None = None) -> dict:
    """The whole experiment (`restart_db`: crash-restarts the database half-way); returns the JSON-ready result."""
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="fedrecon-cluster-"))
    servers = [ServerProcess(url, ["--checkpoint-every", str(checkpoint_every)], port=free_port())
               for _ in range(replicas)]
    procs, kills, stalls = [], 0, Stalls(workdir, clients)
    try:
        for server in servers:
            server.start()
        procs = start_clients(",".join(s.address for s in servers), workdir, clients, pool, dim, stream)
        start = time.monotonic()  # the run, without the servers' start-up
        stalls.start()
        next_kill = time.monotonic() + kill_every
        db_restart_at = None if restart_db is None else time.monotonic() + seconds / 2
        while time.monotonic() - start < seconds:
            if db_restart_at is not None and time.monotonic() >= db_restart_at:
                restart_db()
                db_restart_at = None
            if time.monotonic() >= next_kill:
                victim = rng.choice(servers)
                victim.kill()
                kills += 1
                victim.start()
                next_kill = time.monotonic() + kill_every * rng.uniform(0.5, 1.5)
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a client process failed")
            time.sleep(0.05)
        (workdir / "stop").touch()
        for p in procs:
            p.wait(300)
        elapsed = time.monotonic() - start
        result = verify(url, workdir, clients, pool, dim)
    finally:
        (workdir / "stop").touch()
        stalls.stop()
        for server in servers:
            server.kill()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"replicas": replicas, "clients": clients, "stream": stream, "kills": kills,
            "database_restarts": int(restart_db is not None),
            "seconds": round(elapsed, 1), **result, "acked_per_second": round(result["acked"] / elapsed, 1),
            "longest_stall_s": round(stalls.longest, 2),
            "client_exit_codes": [p.returncode for p in procs]}


def follow_latency(url: str, pushes: int) -> dict:
    """Two stores (replicas) in this process: push on one, time until the other has applied it (no pull asks)."""
    from fedrecon.proto.payloads import Deltas
    from fedrecon.server.store import PrototypeStore

    a, b = PrototypeStore(url), PrototypeStore(url)
    samples = []
    time.sleep(1.0)  # the followers' LISTEN connections open in the background
    try:
        for seq in range(1, pushes + 1):
            start = time.perf_counter()
            version = a.push("latency", seq, "follow", Deltas(["x"], np.ones(1, np.int64), np.ones((1, 4)))).version
            committed = time.perf_counter()
            while not b.wait_for_change(version - 1, timeout=5.0):
                pass
            samples.append(time.perf_counter() - committed)
            time.sleep(max(0.0, 0.02 - (time.perf_counter() - start)))
    finally:
        a.close()
        b.close()
    return {"pushes": pushes, "applied_on_the_other_after_ms": percentiles_ms(samples)}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print JSON; exit 1 if anything was lost, doubled or mismatched."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a PostgreSQL URL (an empty database, or one of an earlier run)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between replica kills")
    parser.add_argument("--stream", type=int, default=4, help="pushes per PushStream call (1: unary Push)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--pool", type=int, default=40, help="distinct class ids")
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-data", type=Path, help="the database server's data folder: crash-restart it half-way "
                        "with pg_ctl (run as the user that owns it)")
    parser.add_argument("--pg-ctl", default="pg_ctl", help="the pg_ctl to use with --pg-data")
    parser.add_argument("--follow-latency", type=int, default=0, metavar="N",
                        help="only measure how soon another replica applies a commit (N pushes)")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.follow_latency:
        print_result(follow_latency(args.db, args.follow_latency), args.out)
        return 0
    restart = None
    if args.pg_data is not None:
        def restart() -> None:
            subprocess.run([args.pg_ctl, "-D", str(args.pg_data), "restart", "-m", "immediate", "-w"], check=True,
                           capture_output=True)
    result = run(args.db, args.seconds, args.replicas, args.clients, args.kill_every, args.pool, args.dim,
                 args.stream, args.checkpoint_every, args.seed, restart)
    print_result(result, args.out)
    return 1 if result["lost"] or result["doubled"] or result["mismatched"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
