"""Many clients on one host: wall time and peak memory, printed as JSON.

`--engine flower` (default): 1,000 virtual clients on Flower's Simulation Engine, each learning one
mission of 3 glyph classes (5 shots), merged by the `PrototypeAveraging` strategy, then an evaluation
round on 10 clients over the whole superset. `--engine inproc`: the same kind of plan through
fedrecon's own in-process transport (e.g. 10,000 clients). Peak memory is the largest summed RSS of
this process and all its descendants (Ray's GCS, raylet and ClientApp actors), sampled every 0.2 s.

    python -m fedrecon.benchmarks.flower_scale --clients 1000
    python -m fedrecon.benchmarks.flower_scale --engine inproc --clients 10000 --shots 3 --queries 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
EMBED_CLIENTS = 256  # inproc engine: clients whose mission images are embedded in one encoder call


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


def _common(args: argparse.Namespace, classes: int) -> dict[str, Any]:
    return {"benchmark": "flower_scale", "method": args.method, "clients": args.clients, "missions": args.missions,
            "ways": args.ways, "shots": args.shots, "queries": args.queries, "classes": classes,
            "encoder": args.encoder}


def run_flower(args: argparse.Namespace, classes: int) -> dict[str, Any]:
    """The ServerApp/ClientApp on Flower's Simulation Engine (Ray), one virtual SuperNode per client."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from fedrecon.experiments.flower_app import ExperimentSettings, simulate

    settings = ExperimentSettings(dataset="glyphs", data_dir=str(Path(args.cache_dir).resolve()), encoder=args.encoder,
                                  glyph_classes=classes, glyph_drawings=args.shots + args.queries,
                                  clients=args.clients, missions=args.missions, ways=args.ways, shots=args.shots,
                                  queries=args.queries, eval_clients=args.eval_clients, method=args.method,
                                  timeout=3600.0)
    t0 = time.perf_counter()
    r = simulate(settings, args.num_cpus)
    wall = time.perf_counter() - t0
    return {**_common(args, classes), "engine": "flower-simulation (ray)", "eval_clients": args.eval_clients,
            "final_accuracy": r["final_accuracy"], "curve": r["curve"], "bytes_up": r["bytes_up"],
            "bytes_down": r["bytes_down"], "bytes_per_merge": r["bytes_per_merge"],
            "app_wall_s": round(r["wall_s"], 2), "wall_s": round(wall, 2)}


def run_inproc(args: argparse.Namespace, classes: int) -> dict[str, Any]:
    """The same plan through fedrecon's own in-process transport: every client keeps a `PrototypeMemory` of
    its mission and pushes; then an evaluator pulls the merged table and classifies sampled queries.
    The frozen encoder embeds many clients' images per call (the result is the same as one call each)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from fedrecon.client.flower import assigned_images, get_encoder, load_data
    from fedrecon.client.memory import PrototypeMemory
    from fedrecon.experiments.transports import InprocTransport
    from fedrecon.proto.flower_records import Assignment
    from fedrecon.server.flower_plan import plan_missions

    torch.set_num_threads(1)  # many tiny embedding calls: threads only contend (Ray's actors run 1 thread too)
    t0 = time.perf_counter()
    data = load_data("glyphs", str(Path(args.cache_dir).resolve()), classes, args.shots + args.queries, 0)
    encoder = get_encoder(args.encoder, 0, "glyphs")
    plan = plan_missions(data.class_ids, [data.count(c) for c in data.class_ids], clients=args.clients,
                         rounds=args.missions, ways=args.ways, shots=args.shots, queries=args.queries, seed=0)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    bytes_up = 0
    with InprocTransport({"dtype": "float32"}) as transport:
        for r, row in enumerate(plan.missions):
            bar = tqdm(total=len(row), desc=f"mission round {r + 1}", unit="client", leave=False)
            for first in range(0, len(row), EMBED_CLIENTS):  # embed many clients' images per call, push one by one
                batch = [assigned_images(data, mission) for mission in row[first : first + EMBED_CLIENTS]]
                embedded = encoder.embed(np.concatenate([images for images, _ in batch]))
                offset = 0
                for k, (images, labels) in enumerate(batch, start=first):
                    memory = PrototypeMemory()
                    memory.add_examples(labels, embedded[offset : offset + len(images)])
                    offset += len(images)
                    ids, counts, means = memory.pending()
                    bytes_up += transport.push(f"client-{k}", encoder.fingerprint, ids, counts, means)[1]
                bar.update(len(batch))
            bar.close()
        merge_s = time.perf_counter() - t1
        pulled, bytes_pull = transport.pull("evaluator", encoder.fingerprint, 0)
    evaluator = PrototypeMemory()
    evaluator.apply_pull(pulled.class_ids, pulled.counts, pulled.means, pulled.version)
    rng = np.random.default_rng(0)
    superset = plan.superset(plan.rounds)
    picks = [(superset[i], plan.queries[superset[i]][0]) for i in rng.choice(len(superset),
                                                                               min(args.eval_queries, len(superset)),
                                                                               replace=False)]
    correct = 0
    for start in range(0, len(picks), 500):
        chunk = picks[start : start + 500]
        images, labels = assigned_images(data, Assignment(tuple(c for c, _ in chunk), tuple((i,) for _, i in chunk)))
        predicted = evaluator.classify(encoder.embed(images))
        correct += sum(p == t for p, t in zip(predicted, labels, strict=True))
    return {**_common(args, classes), "engine": "fedrecon inproc transport", "eval_queries": len(picks),
            "final_accuracy": correct / len(picks), "merged_classes": len(pulled.class_ids),
            "bytes_up": bytes_up, "bytes_full_pull": bytes_pull, "setup_s": round(setup_s, 2),
            "learn_and_merge_s": round(merge_s, 2), "wall_s": round(time.perf_counter() - t0, 2)}


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
    parser.add_argument("--engine", default="flower", choices=["flower", "inproc"],
                        help="flower: Flower's Simulation Engine; inproc: fedrecon's in-process transport (no Flower)")
    parser.add_argument("--eval-queries", type=int, default=5000,
                        help="inproc: held-out images sampled from the whole superset for the accuracy")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    classes = args.clients * args.missions * args.ways
    runner = run_inproc if args.engine == "inproc" else run_flower
    with PeakMemory() as memory:
        figures = runner(args, classes)
    figures.update({"peak_rss_mb": round(memory.peak / 2**20, 1),
                    "driver_peak_rss_mb": round(memory.driver_peak / 2**20, 1), "cpus": os.cpu_count(),
                    "python": platform.python_version()})
    line = json.dumps(figures)
    print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
