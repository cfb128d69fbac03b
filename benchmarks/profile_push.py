"""Where a durable server's push time goes: py-spy samples of the thread holding the GIL, per layer, or
the CPU of each server thread per push.

Run: python -m fedrecon.benchmarks.profile_push [--window 8] [--by-thread] [--out DIR]   (needs py-spy)

8 benchmark client processes push 64 classes x 64-d (as `fedrecon bench --only merge`) to a durable server
while py-spy records which Python frames hold the GIL. Each sample goes to the layer of its innermost
fedrecon (or gRPC) frame; prints JSON with the share per layer, the throughput and the server CPU per push of
the same run. `--by-thread` instead reads each server thread's CPU from /proc during the run (threads that end
early, such as a stream's reader, count too) and names them by their Python names (`py-spy dump`): CPU per
push per role, which also counts the time outside the GIL. `--server-command` profiles another build.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from fedrecon.benchmarks.harness import print_result
from fedrecon.benchmarks.merge import grpc_rate
from fedrecon.experiments.process import ServerProcess

# (layer, substrings of a frame `function (file)`), tried from the innermost frame outwards; first match wins
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("writer: check content", ("check_content", "check_values", "_check_deltas", "_stage (")),
    ("writer: encode + digest", ("pack_operation", "content_digest", "pack_means")),
    ("writer: commit (SQLite)", ("SqliteLog.append", "proto/sqlite_files.py")),
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


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of a process, by thread id (Linux /proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def thread_roles(spy: str, pid: int) -> dict[int, str]:
    """The Python name of each thread by thread id (`py-spy dump`), numbers folded ("fedrecon-rpc_N")."""
    text = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    return {int(m[1]): re.sub(r"\d+", "N", m[2]) for m in re.finditer(r'^Thread (\d+) \(\w+\): "([^"]*)"', text, re.M)}


def by_thread(spy: str, server: ServerProcess, window: int, seconds: float) -> dict:
    """One 8-client run with each server thread's CPU sampled from /proc; CPU per push per thread role."""
    before, latest, roles, done = thread_cpu(server.pid), {}, {}, threading.Event()

    def sample() -> None:
        ticks = 0
        while not done.wait(0.2):
            latest.update(thread_cpu(server.pid))
            ticks += 1
            if ticks in (10, 20):  # mid-run: every call's threads exist
                roles.update(thread_roles(spy, server.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    figures = grpc_rate(server, 8, 64, 64, 4096, seconds, "profile", window)
    done.set()
    sampler.join()
    latest.update(thread_cpu(server.pid))
    per_role: collections.Counter[str] = collections.Counter()
    for tid, cpu in latest.items():
        per_role[roles.get(tid, "gRPC core (C threads, no Python name)")] += cpu - before.get(tid, 0.0)
    pushes = figures["pushes"]
    return {"window": window, "updates_per_s": figures["updates_per_s"],
            "server_cpu_us_per_push": figures["server_cpu_us_per_push"],
            "client_cpu_us_per_push": figures["client_cpu_us_per_push"],
            "server_cpu_us_per_push_by_thread": {role: round(cpu / pushes * 1e6, 1)
                                                 for role, cpu in per_role.most_common() if cpu > 0}}


def run(window: int, seconds: float, out: Path | None, server_command: list[str] | None,
        threads: bool = False) -> dict:
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
        if threads:
            with server:
                return by_thread(spy, server, window, seconds)
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
    parser.add_argument("--by-thread", action="store_true", help="CPU per push of each server thread instead")
    parser.add_argument("--server-command", nargs=argparse.REMAINDER,
                        help="start this instead of `fedrecon server` (it gets --db PATH appended)")
    args = parser.parse_args(argv)
    print_result(run(args.window, args.seconds, args.out, args.server_command, args.by_thread), None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
