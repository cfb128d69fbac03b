"""`fedrecon experiment NAME`: run a reconnaissance protocol with every method on the same missions.

Configs are TOML files in experiments/configs/ (`NAME.toml`, or `--config FILE`); command-line flags
and `--set table.key=value` override them. Writes results.json, a CSV, a markdown table and PNG plots.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fedrecon.client.data import load_dataset
from fedrecon.client.encoder import load_encoder_spec
from fedrecon.experiments import results as results_mod
from fedrecon.experiments.datasets import (
    class_counts,
    fed_recon_class_order,
    take,
)
from fedrecon.experiments.methods import METHODS
from fedrecon.experiments.methods.prototype import EmbeddingCache
from fedrecon.experiments.protocols import Schedule, build, check_parameters, parameters
from fedrecon.experiments.transports import TRANSPORTS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXPERIMENTS = ("omniglot-cil", "omniglot-fed", "mini-imagenet-cil", "mini-imagenet-fed", "glyphs-fed")
TABLES = ("experiment", "dataset", "protocol", "anchors", "runs", "methods")
EXPERIMENT_KEYS = ("name", "runs", "seed", "encoder", "transport", "dtype", "methods", "cache_embeddings", "title")


class ConfigError(ValueError):
    """A config key or command-line option that does not exist or does not apply; the message names it."""


def _unknown(kind: str, keys: list[str], valid: list[str]) -> ConfigError:
    """One line naming the unknown keys (with the closest valid one) and listing the valid ones."""
    hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, valid, 1)) else k for k in keys]
    return ConfigError(f"unknown {kind} {', '.join(hints)}; valid: {', '.join(valid)}")


def validate_config(config: dict[str, Any]) -> None:
    """Refuse unknown tables and keys before anything runs (the [dataset] table is checked by its loader)."""
    def check(kind: str, keys: Any, valid: list[str]) -> None:
        unknown = [k for k in keys if k not in valid]
        if unknown:
            raise _unknown(kind, unknown, valid)

    check("config table", config, list(TABLES))
    check("key in [experiment]:", config.get("experiment", {}), list(EXPERIMENT_KEYS))
    transport = config.get("experiment", {}).get("transport", "inproc")
    if isinstance(transport, str):
        check("transport", [transport], sorted({*TRANSPORTS, "flower"}))  # flower registers itself when used
    protocol = dict(config.get("protocol", {}))
    kind = protocol.pop("kind", None)
    if kind is None:
        raise ConfigError("the config has no protocol.kind")
    try:
        check_parameters(str(kind), protocol)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check("method", config.get("experiment", {}).get("methods", []), list(METHODS))
    check("method in [runs]:", config.get("runs", {}), list(METHODS))
    check("method table", config.get("methods", {}), list(METHODS))
    for m, table in config.get("methods", {}).items():
        check(f"key in [methods.{m}]:", table, sorted(METHODS[m].defaults) or ["(none)"])


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
            up, down = method.bytes_up, method.bytes_down  # learn() may move bytes too (raw images)
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
    return {"method": name, "seed": seed, "rounds": rounds, "bytes_up": method.bytes_up,
            "bytes_down": method.bytes_down,
            "update_ms_per_class": per_class * update_s, "class_updates": class_updates, "cold": cold,
            "embed_ms_per_class": per_class * embed_s, "merge_ms_per_class": per_class * (update_s - embed_s),
            "wall_seconds": time.perf_counter() - start}


def _protocol_params(config: dict[str, Any]) -> dict[str, Any]:
    params = dict(config.get("protocol", {}))
    params.pop("kind", None)
    return params


def planned_runs(config: dict[str, Any]) -> dict[str, int]:
    """Runs each configured method gets: `experiment.runs`, capped per method by the [runs] table."""
    exp = config["experiment"]
    runs = int(exp.get("runs", 1))
    return {m: min(runs, int(config.get("runs", {}).get(m, runs))) for m in exp.get("methods", list(METHODS))}


def run_experiment(config: dict[str, Any], data_dir: str | Path | None = None, progress: bool = True,
                   log: Any = None, out: str | Path | None = None,
                   done: dict[str, list[dict[str, Any]]] | None = None,
                   on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every configured method on `runs` seeded schedules; returns the results document.

    With `out`, the outputs are rewritten after every method's run (status `incomplete` until the last),
    so a stopped run keeps what it finished. `done` holds per-method runs already finished (from
    `load_resume`); they are kept and not run again. `on_run` is called with each newly finished run.
    Every finished run prints one line to `log`, progress bars or not.
    """
    log = sys.stderr if log is None else log
    config = copy.deepcopy(config)
    validate_config(config)
    exp = config["experiment"]
    spec = config["dataset"]
    protocol = config["protocol"]["kind"]
    methods = list(exp.get("methods", list(METHODS)))
    planned = planned_runs(config)
    total = sum(planned.values())
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
    cache = EmbeddingCache(encoder)
    per_method: dict[str, list[dict[str, Any]]] = {m: list((done or {}).get(m, [])) for m in methods}
    transport_config = {"transport": exp.get("transport", "inproc"), "dtype": exp.get("dtype", "float32")}
    data_dir_text = str(data_dir) if data_dir else None

    def document(schedules: list[dict[str, Any]]) -> dict[str, Any]:
        return results_mod.summarize(config, data, encoder, per_method, schedules, planned, data_dir_text)

    finished = sum(len(v) for v in per_method.values())
    if finished:
        print(f"resuming: {finished}/{total} runs already finished", file=log)
    schedules = []
    for run in tqdm(range(runs), desc=exp["name"], unit="run", disable=not progress):
        schedule = build(protocol, ids, counts, seed + run, params, exp["name"])
        schedules.append(schedule.summary())
        run_data = RunData(schedule, data)
        for m in methods:
            if run >= planned[m] or any(r.get("seed") == seed + run for r in per_method[m]):
                continue
            mconf = dict(config.get("methods", {}).get(m, {}))
            if m == "fedrecon":
                mconf = {**transport_config, **mconf}
            # each method's first run embeds its own training images, so every method's update time is its own;
            # its later runs reuse the cached embeddings of the same frozen encoder (same numbers, faster)
            cold = run == 0 or not exp.get("cache_embeddings", True)
            result = run_method(m, encoder, run_data, mconf, cache, seed + run, progress, cold)
            per_method[m].append(result)
            finished += 1
            tqdm.write(f"[{finished}/{total}] {exp['name']} {m} run {run + 1}/{planned[m]} (seed {seed + run}): "
                       f"final {result['rounds'][-1]['mean']:.2f}% in {result['wall_seconds']:.1f}s", file=log)
            if out is not None:
                results_mod.write_all(document(schedules), out)
            if on_run is not None:
                on_run(result)
    return document(schedules)


def load_resume(out: str | Path) -> tuple[dict[str, Any], str | None, dict[str, list[dict[str, Any]]]]:
    """(config, data dir, finished runs per method) of the stopped experiment whose outputs are in `out`."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise ConfigError(f"--resume {out}: no results.json there (nothing to resume)")
    doc = json.loads(path.read_text())
    if doc.get("schema") != results_mod.SCHEMA or "config" not in doc:
        raise ConfigError(f"--resume {out}: {path} is not a {results_mod.SCHEMA} results file")
    done = {m: list(v.get("per_run", [])) for m, v in doc.get("methods", {}).items()}
    return doc["config"], doc.get("data_dir"), done


def register(parser: argparse.ArgumentParser) -> None:
    """Add the experiment's options."""
    parser.add_argument("name", nargs="?", choices=EXPERIMENTS,
                        help="which protocol to run (not needed with --resume)")
    parser.add_argument("--config", help="TOML config file (default: the shipped experiments/configs/NAME.toml)")
    parser.add_argument("--data-dir", help="data set folder (e.g. ../shared/data/omniglot); not needed for glyphs")
    parser.add_argument("--dataset", choices=["omniglot", "glyphs", "mini-imagenet", "folder"],
                        help="replace the config's data set; `folder`: your images, --data-dir ROOT/<class>/<images>")
    parser.add_argument("--out", help="output folder (default runs/NAME)")
    parser.add_argument("--resume", metavar="OUTDIR",
                        help="continue the stopped experiment in OUTDIR (its recorded config; finished runs are kept)")
    parser.add_argument("--clients", type=int, help="number of clients K (federated protocols only)")
    parser.add_argument("--runs", type=int, help="number of seeded runs")
    parser.add_argument("--seed", type=int, help="first seed (run i uses seed + i)")
    parser.add_argument("--transport", help="fedrecon transport: inproc, grpc (or a registered one, e.g. flower)")
    parser.add_argument("--methods", help="comma-separated: " + ",".join(METHODS))
    parser.add_argument("--encoder", help="encoder: shipped name (omniglot, glyphs), checkpoint path, or random")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override any config value, e.g. --set protocol.classes=50 --set runs.upper=1")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (one line per finished run remains)")


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config file with the command line's overrides applied (checked: unknown keys are refused)."""
    config = load_config(args.name, args.config)
    exp = config["experiment"]
    if args.clients is not None:
        kind = config.get("protocol", {}).get("kind", "")
        if "clients" not in sum(parameters(kind), []):
            raise ConfigError(f"--clients does not apply to {args.name}: its protocol {kind!r} has a single client "
                              f"(valid [protocol] keys: {', '.join(sum(parameters(kind), []))})")
        config.setdefault("protocol", {})["clients"] = args.clients
    if args.dataset is not None and args.dataset != config.get("dataset", {}).get("name"):
        config["dataset"] = {"name": args.dataset}
        config.pop("anchors", None)  # published figures of the replaced data set: never plotted beside another
        exp["title"] = f"{config.get('protocol', {}).get('kind', args.name)} protocol"  # not the replaced set's name
    for key in ("runs", "seed", "transport", "encoder"):
        if getattr(args, key) is not None:
            exp[key] = getattr(args, key)
    if args.methods:
        exp["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    for assignment in args.set:
        apply_override(config, assignment)
    validate_config(config)
    return config


def _resume_args(args: argparse.Namespace) -> tuple[dict[str, Any], str | None, dict[str, list[dict[str, Any]]]]:
    """What `--resume OUTDIR` continues; refuses options that would change the recorded experiment."""
    changed = [f"--{k.replace('_', '-')}" for k in ("config", "clients", "runs", "seed", "transport", "methods",
                                                     "encoder", "set") if getattr(args, k)]
    if changed:
        raise ConfigError(f"--resume continues the recorded config; drop {', '.join(changed)}")
    config, data_dir, done = load_resume(args.resume)
    if args.name and args.name != config["experiment"]["name"]:
        raise ConfigError(f"--resume {args.resume} holds {config['experiment']['name']}, not {args.name}")
    return config, args.data_dir or data_dir, done


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the experiment, write the outputs, print the summary table and the comparisons as JSON."""
    try:
        if args.resume:
            config, data_dir, done = _resume_args(args)
            out = Path(args.out or args.resume)
        else:
            if not args.name:
                raise ConfigError(f"name an experiment ({', '.join(EXPERIMENTS)}) or give --resume OUTDIR")
            config, data_dir, done = config_from_args(args), args.data_dir, {}
            out = Path(args.out or f"runs/{args.name}")
    except (ConfigError, ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    try:
        results = run_experiment(config, data_dir, progress=not args.quiet, out=out, done=done)
    except KeyboardInterrupt:
        print(f"stopped; the finished runs are in {out}/results.json (status incomplete); "
              f"continue with: fedrecon experiment --resume {out}", file=sys.stderr)
        return 130
    paths = results_mod.write_all(results, out)
    print(results_mod.markdown_table(results))
    print(json.dumps({"out": str(out), "status": results["status"], "files": [str(p) for p in paths],
                      "comparisons": results["comparisons"]}, indent=2))
    return 0
