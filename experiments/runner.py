"""`fedrecon experiment NAME`: run a reconnaissance protocol with every method on the same missions.

Configs are TOML files in experiments/configs/ (`NAME.toml`, or `--config FILE`); command-line flags
and `--set table.key=value` override them. Writes results.json, a CSV, a markdown table and PNG plots.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fedrecon.experiments import results as results_mod
from fedrecon.experiments.datasets import (
    class_counts,
    fed_recon_class_order,
    load_dataset,
    load_encoder_spec,
    take,
)
from fedrecon.experiments.methods import METHODS
from fedrecon.experiments.methods.prototype import EmbeddingCache
from fedrecon.experiments.protocols import Schedule, build

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXPERIMENTS = ("omniglot-cil", "omniglot-fed", "mini-imagenet-cil", "mini-imagenet-fed", "glyphs-fed")


def load_config(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """The TOML config of a named experiment (or an explicit file)."""
    file = Path(path) if path else CONFIG_DIR / f"{name}.toml"
    if not file.is_file():
        raise FileNotFoundError(f"no config {file} (named experiments: {', '.join(EXPERIMENTS)})")
    with file.open("rb") as f:
        config = tomllib.load(f)
    config.setdefault("experiment", {})["name"] = name
    return config


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply `table.key=value` (value in TOML syntax, bare words taken as strings)."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise ValueError(f"--set expects table.key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *tables, leaf = key.split(".")
    node = config
    for t in tables:
        node = node.setdefault(t, {})
    node[leaf] = value


def accuracy(predicted: list[str], truth: list[str]) -> float:
    """Percentage of predictions equal to the truth."""
    if not truth:
        return float("nan")
    return 100.0 * float(np.mean(np.asarray(predicted, dtype=object) == np.asarray(truth, dtype=object)))


class RunData:
    """One run's schedule with its test images gathered once (shared by every method of the run)."""

    def __init__(self, schedule: Schedule, data: Any) -> None:
        self.schedule = schedule
        self.data = data
        self._test: dict[str, np.ndarray] = {}

    def test_set(self, class_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Test images and labels of the given classes."""
        for cid in class_ids:
            if cid not in self._test:
                self._test[cid] = take(self.data, cid, self.schedule.test[cid])
        if not class_ids:
            return np.zeros((0, *self.data.image_shape), np.float32), []
        images = np.concatenate([self._test[c] for c in class_ids])
        return images, [c for c in class_ids for _ in range(len(self._test[c]))]

    def mission(self, round_index: int, client: int) -> tuple[np.ndarray, list[str]]:
        """A client's training images and labels for one round."""
        visits = [v for v in self.schedule.rounds[round_index].visits if v.client == client]
        images = np.concatenate([take(self.data, v.class_id, v.train) for v in visits])
        return images, [v.class_id for v in visits for _ in range(len(v.train))]


def run_method(name: str, encoder: Any, run: RunData, config: dict[str, Any], cache: EmbeddingCache,
               seed: int, progress: bool = True, cold: bool = True) -> dict[str, Any]:
    """Run one method through one schedule; per-round accuracies, bytes and update time.

    `cold=False` lets prototype methods reuse cached training embeddings (same frozen encoder, same
    numbers, much faster); their update time is then not representative, so results report the cold runs.
    """
    schedule = run.schedule
    n_clients = schedule.clients + (1 if schedule.base_rounds else 0)
    method = METHODS[name](encoder, {**config, "clients": n_clients, "seed": seed})
    if hasattr(method, "eval_cache"):
        method.eval_cache = cache
    if hasattr(method, "learn_cache"):
        method.learn_cache, method.learn_cache_read = cache, not cold
    rounds, update_s, class_updates = [], 0.0, 0
    known: dict[int, set[str]] = {}
    base = set(schedule.groups.get("base", []))
    start = time.perf_counter()
    try:
        bar = tqdm(schedule.rounds, desc=f"{name}", unit="merge", leave=False, disable=not progress)
        for r, rnd in enumerate(bar):
            t0 = time.perf_counter()
            for client in rnd.clients():
                images, labels = run.mission(r, client)
                method.learn(client, images, labels)
                known.setdefault(client, set()).update(labels)
            learn_s = time.perf_counter() - t0
            local = {}
            if schedule.eval_local and r >= schedule.base_rounds:
                for client in rnd.clients():
                    classes = [c for c in schedule.seen_after(r) if c in base or c in known[client]]
                    images, labels = run.test_set(classes)
                    local[str(client)] = accuracy(method.predict(client, images), labels)
            up, down = method.bytes_up, method.bytes_down
            t1 = time.perf_counter()
            method.merge()
            update_s += learn_s + time.perf_counter() - t1
            class_updates += len(rnd.visits)
            seen = schedule.seen_after(r)
            images, labels = run.test_set(seen)
            server_pred = method.predict(None, images)
            server_acc = accuracy(server_pred, labels)
            if method.shared_after_merge:
                clients = [server_acc] * len(schedule.eval_clients)
            else:
                clients = [accuracy(method.predict(c, images), labels) for c in schedule.eval_clients]
            groups = {}
            for g, ids in schedule.groups.items():
                members = set(ids)
                mask = [lab in members for lab in labels]
                if any(mask):
                    groups[g] = accuracy([p for p, m in zip(server_pred, mask, strict=True) if m],
                                         [lab for lab, m in zip(labels, mask, strict=True) if m])
            rounds.append({"round": r, "classes_seen": len(seen), "server": server_acc, "clients": clients,
                           "mean": float(np.mean(clients)), "groups": groups, "local": local,
                           "bytes_up": method.bytes_up - up, "bytes_down": method.bytes_down - down})
            bar.set_postfix(acc=f"{np.mean(clients):.1f}", classes=len(seen))
    finally:
        method.close()
    embed_s = float(getattr(method, "embed_seconds", 0.0))
    per_class = 1000.0 / max(1, class_updates)
    return {"rounds": rounds, "bytes_up": method.bytes_up, "bytes_down": method.bytes_down,
            "update_ms_per_class": per_class * update_s, "class_updates": class_updates, "cold": cold,
            "embed_ms_per_class": per_class * embed_s, "merge_ms_per_class": per_class * (update_s - embed_s),
            "wall_seconds": time.perf_counter() - start}


def _protocol_params(config: dict[str, Any]) -> dict[str, Any]:
    params = dict(config.get("protocol", {}))
    params.pop("kind", None)
    return params


def run_experiment(config: dict[str, Any], data_dir: str | Path | None = None, progress: bool = True,
                   log: Any = sys.stderr, out: str | Path | None = None) -> dict[str, Any]:
    """Run every configured method on `runs` seeded schedules; returns the results document.

    With `out`, the outputs are rewritten after every method's run, so a long run that is stopped keeps
    what it finished.
    """
    config = copy.deepcopy(config)
    exp = config["experiment"]
    spec = config["dataset"]
    protocol = config["protocol"]["kind"]
    methods = list(exp.get("methods", list(METHODS)))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    encoder = load_encoder_spec(exp.get("encoder", "random"), spec["name"], spec.get("image_size"),
                                int(exp.get("seed", 0)))
    image_size = encoder.config["image_size"]
    params = _protocol_params(config)
    needed = class_order = None
    if protocol == "fed-recon-benchmark":
        order = fed_recon_class_order(spec, Path(data_dir) if data_dir else None)
        half = len(order) // 2
        nb, nf = int(params.get("base_classes", 50)), int(params.get("field_classes", 50))
        needed = order[:half][:nb] + order[half:][:nf]
        class_order = order
    t0 = time.perf_counter()
    data = load_dataset(spec, data_dir, image_size, needed, encoder.preprocessing)
    print(f"loaded {data.name}: {len(data.class_ids)} classes, {len(data)} images "
          f"({time.perf_counter() - t0:.1f}s); encoder {encoder.fingerprint}", file=log)
    counts = class_counts(data)
    ids = class_order if class_order is not None else data.class_ids
    runs, seed = int(exp.get("runs", 1)), int(exp.get("seed", 0))
    method_runs = config.get("runs", {})
    cache = EmbeddingCache(encoder)
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    transport_config = {"transport": exp.get("transport", "inproc"), "dtype": exp.get("dtype", "float32")}
    schedules = []
    for run in tqdm(range(runs), desc=exp["name"], unit="run", disable=not progress):
        schedule = build(protocol, ids, counts, seed + run, params, exp["name"])
        schedules.append(schedule.summary())
        run_data = RunData(schedule, data)
        for m in methods:
            if run >= int(method_runs.get(m, runs)):
                continue
            mconf = dict(config.get("methods", {}).get(m, {}))
            if m == "fedrecon":
                mconf = {**transport_config, **mconf}
            # the first method's first run (fedrecon by default) embeds its training images itself, so its update
            # time is real; every later prototype run reuses the cached embeddings (same numbers, faster)
            cold = (run == 0 and m == methods[0]) or not exp.get("cache_embeddings", True)
            per_method[m].append(run_method(m, encoder, run_data, mconf, cache, seed + run, progress, cold))
            if out is not None:
                results_mod.write_all(results_mod.summarize(config, data, encoder, per_method, schedules), out)
    return results_mod.summarize(config, data, encoder, per_method, schedules)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the experiment's options."""
    parser.add_argument("name", choices=EXPERIMENTS, help="which protocol to run")
    parser.add_argument("--config", help="TOML config file (default: the shipped experiments/configs/NAME.toml)")
    parser.add_argument("--data-dir", help="data set folder (e.g. ../shared/data/omniglot); not needed for glyphs")
    parser.add_argument("--dataset", choices=["omniglot", "glyphs", "mini-imagenet", "folder"],
                        help="replace the config's data set; `folder`: your images, --data-dir ROOT/<class>/<images>")
    parser.add_argument("--out", help="output folder (default runs/NAME)")
    parser.add_argument("--clients", type=int, help="number of clients K (federated protocols)")
    parser.add_argument("--runs", type=int, help="number of seeded runs")
    parser.add_argument("--seed", type=int, help="first seed (run i uses seed + i)")
    parser.add_argument("--transport", help="fedrecon transport: inproc, grpc (or a registered one, e.g. flower)")
    parser.add_argument("--methods", help="comma-separated: " + ",".join(METHODS))
    parser.add_argument("--encoder", help="encoder: shipped name (omniglot, glyphs), checkpoint path, or random")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override any config value, e.g. --set protocol.classes=50 --set runs.upper=1")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config file with the command line's overrides applied."""
    config = load_config(args.name, args.config)
    exp = config["experiment"]
    if args.clients is not None:
        config.setdefault("protocol", {})["clients"] = args.clients
    if args.dataset is not None:
        config["dataset"] = {"name": args.dataset}
    for key in ("runs", "seed", "transport", "encoder"):
        if getattr(args, key) is not None:
            exp[key] = getattr(args, key)
    if args.methods:
        exp["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    for assignment in args.set:
        apply_override(config, assignment)
    return config


def run(args: argparse.Namespace) -> int:
    """Run the experiment, write the outputs, print the summary table and the targets as JSON."""
    config = config_from_args(args)
    out = Path(args.out or f"runs/{args.name}")
    results = run_experiment(config, args.data_dir, progress=not args.quiet, out=out)
    paths = results_mod.write_all(results, out)
    print(results_mod.markdown_table(results))
    print(json.dumps({"out": str(out), "files": [str(p) for p in paths], "targets": results["targets"]}, indent=2))
    return 0
