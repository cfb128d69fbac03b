"""Load: many concurrent clients push to a durable, authenticated server for a fixed time; errors and push latency.

Run: python -m fedrecon.benchmarks.load --clients 64 --seconds 60

The server is a real `fedrecon server` process on a SQLite database with a token file (one client
token per simulated client); clients are threads spread over a few worker processes, each with its
own channel and token, pushing without client-side retries, so every refusal or timeout counts as
an error. Prints JSON with `errors`, `p50_ms`, `p99_ms` (push round trip) and throughput.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fedrecon.benchmarks.harness import free_port, percentiles_ms, print_result
from fedrecon.experiments.process import ServerProcess

SPACE = "load"


def client_thread(address: str, client_id: str, token: str | None, start_at: float, stop_at: float, classes: int,
                  dim: int, out: dict) -> None:
    """Push until `stop_at`, recording latencies and errors."""
    import grpc

    from fedrecon.client.recon_client import ReconClient
    from fedrecon.proto.channel import ChannelSecurity

    rng = np.random.default_rng(abs(hash(client_id)) % 2**32)
    latencies: list[float] = []
    errors: list[str] = []
    with ReconClient(address, client_id, timeout=30.0, retries=0, security=ChannelSecurity(token=token)) as client:
        client.info()  # connect before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            ids = [f"k{i}" for i in rng.choice(4 * classes, size=classes, replace=False)]
            means = rng.normal(size=(classes, dim)).astype(np.float32)
            t0 = time.perf_counter()
            try:
                client.push(SPACE, ids, rng.integers(1, 20, size=classes), means)
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as error:
                errors.append(f"{error.code().name}: {error.details()}")
                client.state.pending, client.state.pending_seq = None, 0
    out[client_id] = {"latencies": latencies, "errors": errors}


def worker(args: argparse.Namespace) -> int:
    """One process running several client threads; prints their results as JSON."""
    clients = json.loads(args.clients_json)
    out: dict = {}
    threads = [threading.Thread(target=client_thread, args=(args.address, cid, token, args.start_at, args.stop_at,
                                                            args.classes, args.dim, out)) for cid, token in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))
    return 0


def run(clients: int, seconds: float, processes: int = 4, classes: int = 16, dim: int = 64, auth: bool = True,
        warmup: float = 8.0) -> dict:
    """Start the server and the client processes, wait, aggregate."""
    from fedrecon.server.auth import add_token

    workdir = Path(tempfile.mkdtemp(prefix="fedrecon-load-"))
    ids = [f"load{i}" for i in range(clients)]
    tokens: dict[str, str | None] = {cid: None for cid in ids}
    extra: list[str] = []
    if auth:
        tokens = {cid: add_token(workdir / "tokens.json", cid) for cid in ids}
        extra = ["--tokens", str(workdir / "tokens.json")]
    server = ServerProcess(workdir / "load.db", extra, port=free_port(), insecure=not auth).start()
    processes = max(1, min(processes, clients))
    start_at = time.time() + warmup
    stop_at = start_at + seconds
    groups = [[(cid, tokens[cid]) for cid in ids[p::processes]] for p in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "fedrecon.benchmarks.load", "--worker", "--address",
                               server.address, "--clients-json", json.dumps(group), "--start-at", str(start_at),
                               "--stop-at", str(stop_at), "--classes", str(classes), "--dim", str(dim)],
                              stdout=subprocess.PIPE, text=True) for group in groups]
    results: dict = {}
    try:
        for p in procs:
            out, _ = p.communicate(timeout=seconds + warmup + 300)
            results.update(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.stop()
    latencies = [x for r in results.values() for x in r["latencies"]]
    errors = [e for r in results.values() for e in r["errors"]]
    missing = clients - len(results)
    return {"clients": clients, "seconds": seconds, "auth": auth, "durable": True, "classes_per_push": classes,
            "dim": dim, "errors": len(errors) + missing, "pushes": len(latencies),
            "pushes_per_s": round(len(latencies) / seconds, 1), **percentiles_ms(latencies),
            "clients_without_results": missing, "first_errors": errors[:5]}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the load test (or, with --worker, one client process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=4, help="client processes the threads are spread over")
    parser.add_argument("--classes", type=int, default=16, help="classes per push")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds for processes to start and connect")
    parser.add_argument("--no-auth", action="store_true", help="run the server with --insecure instead of tokens")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--clients-json", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--stop-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    result = run(args.clients, args.seconds, args.processes, args.classes, args.dim, not args.no_auth,
                 args.warmup)
    print_result(result, args.out)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
