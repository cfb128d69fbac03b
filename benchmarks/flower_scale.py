"""Many clients on one host: wall time and peak memory, printed as JSON.

`--engine flower` (default): 1,000 virtual clients on Flower's Simulation Engine, each learning one
mission of 3 glyph classes (5 shots), merged by the `PrototypeAveraging` strategy, then an evaluation
round on 10 clients over the whole superset. `--ray-address HOST:PORT` runs it on an existing Ray
cluster; `--ray-nodes N` starts N Ray nodes on loopback (`ray start --block`), runs on them and stops
them. `--engine inproc`: the same kind of plan through fedrecon's own in-process transport (e.g. 10,000
clients). Peak memory is the largest summed RSS of this process and all its descendants (Ray's GCS,
raylets, agents and ClientApp actors; the `--ray-nodes` nodes too, not an existing cluster's), sampled
every 0.2 s, with its parts by process at that moment; the summed PSS counts shared pages once.

    python -m fedrecon.benchmarks.flower_scale --clients 1000
    python -m fedrecon.benchmarks.flower_scale --clients 10000 --ray-nodes 2
    python -m fedrecon.benchmarks.flower_scale --engine inproc --clients 10000 --shots 3 --queries 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
EMBED_CLIENTS = 256  # inproc engine: clients whose mission images are embedded in one encoder call


def _parents() -> dict[int, int]:
    """Parent pid of every process (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    return parents


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (Ray's GCS and raylet, their workers and actors, `ray start` nodes)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack += children.get(pid, [])
    return tree


def rss_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; PSS splits shared pages (Ray's object store, shared libraries)
    among the processes that map them, so a sum of PSS counts each page once. (0, 0) if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        return 0, 0
    return rss, pss


def process_kind(pid: int, root: int) -> str:
    """A short name for a process of the tree: `driver`, a Ray title (`ray::ClientAppActor`), or the program."""
    if pid == root:
        return "driver"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0].split(".")[0]
    args = [a for a in argv if a and not a.startswith("-")]
    if len(args) > 1 and "python" in Path(args[0]).name:
        args = args[1:]  # a script: name it, not the interpreter
    if not args:
        return "?"
    if Path(args[0]).name == "ray" and len(args) > 1:
        return f"ray {args[1]}"  # a node's `ray start --block`
    return Path(args[0]).name


def tree_rss(root: int) -> tuple[int, int]:
    """(RSS of `root`, RSS of `root` plus all its descendants) in bytes, read from /proc (Linux)."""
    total = own = 0
    for pid in process_tree(root):
        rss = rss_pss(pid)[0]
        total += rss
        own = rss if pid == root else own
    return own, total


class PeakMemory:
    """Samples this process tree in a thread: `.peak` the largest summed RSS, `.by_kind` its parts by kind of
    process at that moment, `.peak_pss` the largest summed PSS, `.driver_peak` this process's largest RSS (bytes)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = self.peak_pss = self.driver_peak = 0
        self.by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        root = os.getpid()
        total = total_pss = 0
        kinds: dict[str, int] = {}
        for pid in process_tree(root):
            rss, pss = rss_pss(pid)
            total, total_pss = total + rss, total_pss + pss
            kind = process_kind(pid, root)
            kinds[kind] = kinds.get(kind, 0) + rss
        self.driver_peak = max(self.driver_peak, kinds.get("driver", 0))
        self.peak_pss = max(self.peak_pss, total_pss)
        if total > self.peak:
            self.peak, self.by_kind = total, kinds

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

    def figures(self) -> dict[str, Any]:
        """The peaks in MiB, as the benchmark prints them."""
        mib = 2**20
        return {"peak_rss_mb": round(self.peak / mib, 1), "peak_pss_mb": round(self.peak_pss / mib, 1),
                "driver_peak_rss_mb": round(self.driver_peak / mib, 1),
                "at_peak_rss_mb_by_process": {k: round(v / mib, 1) for k, v in sorted(self.by_kind.items()) if v}}


def _common(args: argparse.Namespace, classes: int) -> dict[str, Any]:
    return {"benchmark": "flower_scale", "method": args.method, "clients": args.clients, "missions": args.missions,
            "ways": args.ways, "shots": args.shots, "queries": args.queries, "classes": classes,
            "encoder": args.encoder}


def run_flower(args: argparse.Namespace, classes: int) -> dict[str, Any]:
    """The ServerApp/ClientApp on Flower's Simulation Engine (Ray), one virtual SuperNode per client: on a Ray
    of its own, on the cluster at `--ray-address`, or on a loopback cluster of `--ray-nodes` nodes it starts."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from fedrecon.experiments.flower_app import ExperimentSettings, simulate

    node_log = tempfile.mkdtemp(prefix="flower-scale-nodes-")
    settings = ExperimentSettings(dataset="glyphs", data_dir=str(Path(args.cache_dir).resolve()), encoder=args.encoder,
                                  glyph_classes=classes, glyph_drawings=args.shots + args.queries,
                                  clients=args.clients, missions=args.missions, ways=args.ways, shots=args.shots,
                                  queries=args.queries, eval_clients=args.eval_clients, method=args.method,
                                  timeout=3600.0, node_log=node_log)
    t0 = time.perf_counter()
    with _ray_cluster(args) as address:
        r = simulate(settings, args.num_cpus, address)
    wall = time.perf_counter() - t0
    calls = _calls_per_node(Path(node_log))
    shutil.rmtree(node_log, ignore_errors=True)
    return {**_common(args, classes), "engine": "flower-simulation (ray)", "ray": _ray_label(args),
            "clientapp_calls_per_node": calls, "eval_clients": args.eval_clients,
            "final_accuracy": r["final_accuracy"], "curve": r["curve"], "bytes_up": r["bytes_up"],
            "bytes_down": r["bytes_down"], "bytes_per_merge": r["bytes_per_merge"],
            "app_wall_s": round(r["wall_s"], 2), "wall_s": round(wall, 2)}


@contextlib.contextmanager
def _ray_cluster(args: argparse.Namespace) -> Iterator[str]:
    """The Ray address to run on: `--ray-address`, a loopback cluster of `--ray-nodes` nodes started (and stopped)
    here, or "" (the Simulation Engine starts a Ray of its own)."""
    if args.ray_address or not args.ray_nodes:
        yield args.ray_address
        return
    from fedrecon.experiments.ray_cluster import LocalRayCluster

    with LocalRayCluster(nodes=args.ray_nodes, cpus=args.node_cpus, object_store_mb=args.object_store_mb) as cluster:
        yield cluster.address


def _ray_label(args: argparse.Namespace) -> str:
    if args.ray_address:
        return f"existing cluster at {args.ray_address} (its processes are not in the peaks)"
    if args.ray_nodes:
        return f"{args.ray_nodes} loopback nodes x {args.node_cpus} CPUs (ray start, counted in the peaks)"
    return "its own (ray.init by the Simulation Engine)"


def _calls_per_node(folder: Path) -> dict[str, int]:
    """ClientApp calls per Ray node (first 8 hex digits of its id), from the `node_witness` logs."""
    counts: dict[str, int] = {}
    for log in folder.glob("*.log"):
        node = log.name.split(".")[0][:8]
        counts[node] = counts.get(node, 0) + len(log.read_text().splitlines())
    return dict(sorted(counts.items()))


def run_inproc(args: argparse.Namespace, classes: int) -> dict[str, Any]:
    """The same plan through fedrecon's own in-process transport: every client keeps a `PrototypeMemory` of
    its mission and pushes; then an evaluator pulls the merged table and classifies sampled queries.
    The frozen encoder embeds many clients' images per call (the result is the same as one call each)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from fedrecon.client.flower import assigned_images, get_encoder, load_data
    from fedrecon.client.memory import PrototypeMemory
    from fedrecon.client.replica import Replica
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
    replicas: dict[int, Replica] = {}  # one per client id: it numbers that client's pushes
    with InprocTransport({"dtype": "float32"}) as transport:
        for r, row in enumerate(plan.missions):
            bar = tqdm(total=len(row), desc=f"mission round {r + 1}", unit="client", leave=False)
            for first in range(0, len(row), EMBED_CLIENTS):  # embed many clients' images per call, push one by one
                batch = [assigned_images(data, mission) for mission in row[first : first + EMBED_CLIENTS]]
                embedded = encoder.embed(np.concatenate([images for images, _ in batch]))
                offset = 0
                for k, (images, labels) in enumerate(batch, start=first):
                    replica = replicas.setdefault(k, Replica(f"client-{k}", encoder.fingerprint))
                    replica.memory.add_examples(labels, embedded[offset : offset + len(images)])
                    offset += len(images)
                    merger = transport.merger(replica.client_id)
                    replica.push(merger)
                    bytes_up += merger.bytes_up
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
    parser.add_argument("--ray-address", default="",
                        help="run on the existing Ray cluster at HOST:PORT (Flower's init_args.address)")
    parser.add_argument("--ray-nodes", type=int, default=0,
                        help="start a Ray cluster of this many nodes on loopback and run on it (0: Flower's own Ray)")
    parser.add_argument("--node-cpus", type=int, default=1, help="--ray-nodes: CPUs each node declares")
    parser.add_argument("--object-store-mb", type=int, default=256, help="--ray-nodes: object store per node (MiB)")
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
    figures.update({**memory.figures(), "cpus": os.cpu_count(), "load_avg_1m_5m_15m": list(os.getloadavg()),
                    "python": platform.python_version()})
    line = json.dumps(figures)
    print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
