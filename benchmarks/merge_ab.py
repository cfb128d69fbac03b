"""Two server builds side by side: interleaved rounds of the same 8-client push run against each, medians.

Run: git worktree add /tmp/before HEAD~1
     python -m fedrecon.benchmarks.merge_ab --b-checkout /tmp/before [--window 8] [--rounds 4]

On a shared machine one run of a build differs from the next by a third, so a change is judged by
alternating A and B runs (A: this checkout's `fedrecon server`; B: the server of another checkout, run
from its own sources, or `--b-command CMD...`, given `--port 0 --insecure --synchronous FULL --db PATH`)
and comparing medians. Prints JSON: every run, per build the median updates/s and server CPU per push,
and B / A.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from fedrecon.benchmarks.harness import print_result
from fedrecon.benchmarks.merge import grpc_rate
from fedrecon.experiments.process import FEDRECON, ServerProcess
from fedrecon.layout import checkout_runner

SERVER_ARGS = ["--port", "0", "--insecure", "--synchronous", "FULL", "--db"]


def run(b_command: list[str], rounds: int, window: int, seconds: float, clients: int = 8) -> dict:
    """`rounds` x (A run, B run); returns every run and the medians."""
    builds = {"a": [*FEDRECON, "server"], "b": b_command}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(rounds):
            for name, command in builds.items():
                db = Path(tmp) / f"{name}{k}.db"
                with ServerProcess(command=[*command, *SERVER_ARGS, str(db)]) as server:
                    r = grpc_rate(server, clients, 64, 64, 4096, seconds, f"{name}{k}", window)
                runs.append({"build": name, "round": k, "updates_per_s": r["updates_per_s"],
                             "server_cpu_us_per_push": r["server_cpu_us_per_push"]})
    out: dict = {"window": window, "clients": clients, "rounds": rounds, "runs": runs}
    for name in builds:
        mine = [r for r in runs if r["build"] == name]
        out[f"{name}_median_updates_per_s"] = statistics.median(r["updates_per_s"] for r in mine)
        out[f"{name}_median_server_cpu_us_per_push"] = statistics.median(r["server_cpu_us_per_push"] for r in mine)
    out["b_over_a"] = out["b_median_updates_per_s"] / out["a_median_updates_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=int, default=0, help="0: unary pushes; N: PushStream with N in flight")
    parser.add_argument("--seconds", type=float, default=4.0)
    other = parser.add_mutually_exclusive_group(required=True)
    other.add_argument("--b-checkout", type=Path, help="another fedrecon checkout (e.g. a git worktree)")
    other.add_argument("--b-command", nargs=argparse.REMAINDER,
                       help="the other server's command (the server arguments are appended)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        if args.b_checkout is not None:
            if not (args.b_checkout / "pyproject.toml").exists():
                parser.error(f"--b-checkout {args.b_checkout}: no pyproject.toml there")
            b_command = [sys.executable, str(checkout_runner(args.b_checkout, Path(tmp))), "server"]
        else:
            b_command = args.b_command
        print_result(run(b_command, args.rounds, args.window, args.seconds), None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
