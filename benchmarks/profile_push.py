"""Where a durable server's push time goes: py-spy samples of the thread holding the GIL, per layer.

Run: python -m fedrecon.benchmarks.profile_push [--window 8] [--out DIR]   (needs `pip install py-spy`)

8 benchmark client processes push 64 classes x 64-d (as `fedrecon bench --only merge`) to a durable server
while py-spy records which Python frames hold the GIL (the server is GIL-bound, so that is its cost). Each
sample goes to the layer of its innermost fedrecon (or gRPC) frame; prints JSON with the share per layer,
the throughput and the server CPU per push of the same run. `--server-command` profiles another build.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fedrecon.benchmarks.harness import print_result
from fedrecon.benchmarks.merge import grpc_rate
from fedrecon.server.process import ServerProcess

# (layer, substrings of a frame `function (file)`), tried from the innermost frame outwards; first match wins
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("writer: check content", ("check_content", "check_values", "_check_deltas", "_stage (")),
    ("writer: encode + digest", ("pack_operation", "content_digest", "pack_means")),
    ("writer: commit (SQLite)", ("SqliteLog.append", "_Transaction")),
    ("writer: apply to tables", ("_apply", "add_sums", "PrototypeTable")),
    ("writer: batching", ("_writer_loop", "_process (")),
    ("service: decode", ("decode_deltas", "decode_matrix")),
    ("service: push path", ("ReconnaissanceService", "submit_push", "_enqueue", "_put (server/service", "push_reply",
                            "Pending.wait")),
    ("interceptors", ("server/metrics.py", "server/auth.py", "server/ratelimit.py")),
    ("gRPC (receive, dispatch, send)", ("grpc/",)),
    ("thread hand-offs (locks, events)", ("threading.py", "concurrent/futures")),
]


def layer_of(stack: list[str]) -> str:
    """The layer of one sampled stack (root first), by its innermost frame that matches a layer."""
    for frame in reversed(stack):
        for name, needles in LAYERS:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarize(raw: str) -> dict[str, float]:
    """Share of samples per layer from py-spy's `--format raw` output (collapsed stacks with counts)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[layer_of(stack.split(";")[1:])] += int(n)  # the first entry names the thread
    total = sum(counts.values()) or 1
    return {name: round(n / total, 4) for name, n in counts.most_common()}


def run(window: int, seconds: float, out: Path | None, server_command: list[str] | None) -> dict:
    """Profile one 8-client run; returns shares per layer next to the run's throughput."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("profile_push: py-spy not found on PATH (pip install py-spy)")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "server.db"
        command = [*server_command, "--db", str(db)] if server_command else None
        server = ServerProcess(db, ["--synchronous", "FULL"]) if command is None else ServerProcess(command=command)
        raw = (out or Path(tmp)) / f"push-window{window}.raw.txt"
        raw.parent.mkdir(parents=True, exist_ok=True)
        with server:
            recorder = subprocess.Popen([spy, "record", "--pid", str(server.pid), "--gil", "--threads", "--rate",
                                         "500", "--duration", str(int(seconds) + 1), "--format", "raw", "--output",
                                         str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
            figures = grpc_rate(server, 8, 64, 64, 4096, seconds, "profile", window)
            recorder.wait(timeout=60)
        shares = summarize(raw.read_text()) if raw.exists() else {}
    return {"window": window, "updates_per_s": figures["updates_per_s"],
            "server_cpu_us_per_push": figures["server_cpu_us_per_push"], "gil_share_by_layer": shares,
            "raw_profile": str(raw) if out else None}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, profile, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=0, help="0: unary pushes; N: PushStream with N in flight")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, help="keep the raw py-spy profile here")
    parser.add_argument("--server-command", nargs=argparse.REMAINDER,
                        help="start this instead of `fedrecon server` (it gets --db PATH appended)")
    args = parser.parse_args(argv)
    print_result(run(args.window, args.seconds, args.out, args.server_command), None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
