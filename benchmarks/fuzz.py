"""Fuzz a real server process with hostile requests (hypothesis-generated) and raw garbage; it must answer and survive.

Run: python -m fedrecon.benchmarks.fuzz --requests 10000

Every request must get a status (raw socket garbage: the server must stay up), no call may end in an
unhandled server error (UNKNOWN, or INTERNAL for a decodable message), and every refused request must
leave the store exactly as it was (merged tables, client sequence numbers, version). Prints JSON with
`requests`, `crashes` (server deaths plus unhandled errors) and `store_changed` (refusals that changed it).
Needs the dev extras (hypothesis).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
from hypothesis import HealthCheck, Phase, given, settings
from tqdm import tqdm

from fedrecon.benchmarks.harness import free_port, print_result
from fedrecon.benchmarks.hostile import Outcome, Target, actions
from fedrecon.experiments.process import ServerProcess
from fedrecon.proto.v1 import recon_pb2 as pb


def run(requests: int, seed: int = 0, millions: int = 2, bound_pushes: int = 66) -> dict:
    """Send `requests` hostile actions (plus one-million-class pushes and pushes past a space's count bound)."""
    server = ServerProcess(port=free_port()).start()
    target = Target(server.address)
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    bugs: list[str] = []
    deaths = 0
    store_changed = 0
    accepted_changes = 0
    progress = tqdm(total=requests + millions + bound_pushes, desc="fuzz", file=sys.stderr, mininterval=2.0)
    start = time.monotonic()

    def record(action: dict, outcome: Outcome) -> None:
        nonlocal deaths, store_changed, accepted_changes
        progress.update(1)
        kinds[outcome.kind] += 1
        statuses[outcome.code.name if outcome.code is not None else "socket"] += 1
        if outcome.bug:
            bugs.append(repr(action)[:400])
            if outcome.changed:
                store_changed += 1
        elif outcome.changed:
            accepted_changes += 1
        if not server.alive():
            deaths += 1
            bugs.append(f"server died after {repr(action)[:400]}: {server.log_tail(1000)}")
            server.start()

    @settings(max_examples=requests, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(action=actions)
    def fuzz(action: dict) -> None:
        record(action, target.send(action))

    bound: Counter[str] = Counter()
    try:
        for i in range(millions):
            action = {"kind": "million", "dim": 1 if i % 2 == 0 else 20}
            record(action, target.send(action))
        for _ in range(bound_pushes):  # up to and past a space's count bound: refused whole, Info still answers
            outcome = target.send({"kind": "bound", "space": "bound"})
            record({"kind": "bound"}, outcome)
            bound[outcome.code.name if outcome.code is not None else "none"] += 1
            try:
                target.stub.Info(pb.InfoRequest(), timeout=30)
            except grpc.RpcError as error:  # totals must never overflow what Info can say
                bugs.append(f"Info failed after a bound push: {error.code().name}: {error.details()}")
        fuzz()
        alive = server.alive()
    finally:
        progress.close()
        target.close()
        server.stop()
    return {"requests": sum(kinds.values()), "crashes": deaths + sum(1 for b in bugs if "server died" not in b),
            "store_changed": store_changed, "server_deaths": deaths, "alive_at_end": alive,
            "accepted_changes": accepted_changes, "kinds": dict(kinds), "statuses": dict(statuses),
            "bound_pushes": dict(bound),
            "first_failures": bugs[:5], "seconds": round(time.monotonic() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, fuzz, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--millions", type=int, default=2, help="one-million-class pushes to include")
    parser.add_argument("--bound-pushes", type=int, default=66,
                        help="pushes of 65,536 classes at count 2**40 (a space's bound is reached after 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be >= 1")
    result = run(args.requests, args.seed, args.millions, args.bound_pushes)
    print_result(result, args.out)
    return 0 if result["crashes"] == 0 and result["store_changed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
