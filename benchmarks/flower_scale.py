"""Many virtual clients through Flower's Simulation Engine: wall time and peak memory, printed as JSON.

Default: 1,000 virtual clients, each learning one mission of 3 glyph classes (5 shots), merged by the
`PrototypeAveraging` strategy, then an evaluation round on 10 clients over the whole superset. Peak
memory is the largest summed RSS of this process and all its descendants (Ray's GCS, raylet and
ClientApp actors), sampled every 0.2 s.

    python -m fedrecon.benchmarks.flower_scale --clients 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> tuple[int, int]:
    """(RSS of `root`, RSS of `root` plus all its descendants) in bytes, read from /proc (Linux)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pages = int((entry / "statm").read_text().split()[1])
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[pid] = pages * PAGE
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return rss.get(root, 0), total


class PeakMemory:
    """Samples the RSS of this process tree in a thread; `.peak` is the largest sum seen (bytes)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self.driver_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        own, total = tree_rss(os.getpid())
        self.driver_peak = max(self.driver_peak, own)
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def main(argv: list[str] | None = None) -> int:
    """Run the simulation and print one JSON object with the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--ways", type=int, default=3, help="classes per client mission")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--missions", type=int, default=1)
    parser.add_argument("--eval-clients", type=int, default=10)
    parser.add_argument("--encoder", default="glyphs", help="shipped name, checkpoint path, or random")
    parser.add_argument("--cache-dir", default=".fedrecon-cache", help="glyph cache folder")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per ClientApp actor")
    parser.add_argument("--method", default="fedrecon", choices=["fedrecon", "fedavg"])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from flwr.simulation import run_simulation

    from fedrecon.client.flower import app as client_app
    from fedrecon.server.flower_app import FlowerSettings, make_server_app

    classes = args.clients * args.missions * args.ways
    settings = FlowerSettings(dataset="glyphs", data_dir=str(Path(args.cache_dir).resolve()), encoder=args.encoder,
                              glyph_classes=classes, glyph_drawings=args.shots + args.queries,
                              clients=args.clients, missions=args.missions, ways=args.ways, shots=args.shots,
                              queries=args.queries, eval_clients=args.eval_clients, method=args.method,
                              timeout=3600.0)
    results: list[dict] = []
    backend = {"client_resources": {"num_cpus": args.num_cpus, "num_gpus": 0.0},
               "init_args": {"num_cpus": os.cpu_count() or 1, "logging_level": "error"}}
    t0 = time.perf_counter()
    with PeakMemory() as memory:
        run_simulation(make_server_app(settings, results.append), client_app, num_supernodes=args.clients,
                       backend_config=backend)
    wall = time.perf_counter() - t0
    if not results:
        raise SystemExit("the simulation produced no results (see the log above)")
    r = results[0]
    figures = {"benchmark": "flower_scale", "engine": "flower-simulation (ray)", "method": args.method,
               "clients": args.clients, "missions": args.missions, "ways": args.ways, "shots": args.shots,
               "classes": classes, "eval_clients": args.eval_clients, "encoder": args.encoder,
               "final_accuracy": r["final_accuracy"], "curve": r["curve"], "bytes_up": r["bytes_up"],
               "bytes_down": r["bytes_down"], "bytes_per_merge": r["bytes_per_merge"],
               "app_wall_s": round(r["wall_s"], 2), "wall_s": round(wall, 2),
               "peak_rss_mb": round(memory.peak / 2**20, 1), "driver_peak_rss_mb": round(memory.driver_peak / 2**20, 1),
               "cpus": os.cpu_count(), "python": platform.python_version()}
    line = json.dumps(figures)
    print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
