"""The fedrecon Flower `ServerApp`: federated reconnaissance (prototype averaging) over a Flower grid.

`flwr run .` reads `[tool.flwr.app.config]` from pyproject.toml (override with `--run-config`):
dataset (`glyphs` | `omniglot`), data-dir, encoder, clients, missions, ways, shots, queries, seed,
dtype, db (SQLite path or postgresql:// URL of a durable store, shared with `fedrecon server` replicas; empty:
in memory), out (write results JSON there),
timeout (seconds a round waits for replies), wait-nodes (seconds to wait for `clients` nodes at the
start), min-nodes (the fewest nodes a round may go on with; 0: any), robust, robust-estimator and
robust-count-cap (the store's robust merge rule, as `fedrecon server --robust`). The results are also logged as
one JSON line. A run that cannot finish (fewer nodes than min-nodes answer) raises, so the ServerApp
fails and Flower records the run as failed. It knows nothing of baselines: `make_server_app(run=...,
settings_type=...)` is the hook the experiments' app (`fedrecon.experiments.flower_app`) uses to add FedAvg.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedrecon.server.flower import PrototypeAveraging
from fedrecon.server.flower_plan import ReconPlan, describe, plan_missions
from fedrecon.server.merge import MergeRule
from fedrecon.server.robust import RobustConfig, RobustMerge
from fedrecon.server.store import PrototypeStore

log = logging.getLogger("fedrecon.flower")


@dataclass
class FlowerSettings:
    """Run configuration of the Flower app (keys as in pyproject, with `-` for `_`)."""

    dataset: str = "glyphs"
    data_dir: str = ""
    encoder: str = ""
    encoder_seed: int = 0
    glyph_classes: int = 200
    glyph_drawings: int = 20
    data_seed: int = 0
    clients: int = 5
    missions: int = 3
    ways: int = 5
    shots: int = 5
    queries: int = 5
    seed: int = 0
    dtype: str = "float32"
    db: str = ""
    eval_clients: int = 0
    out: str = ""
    timeout: float = 600.0
    wait_nodes: float = 120.0
    min_nodes: int = 0
    robust: str = ""  # spaces merged robustly, comma-separated ('*': every space), as `fedrecon server --robust`
    robust_estimator: str = "trimmed"
    robust_count_cap: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowerSettings:
        """Build from a run config; unknown keys are an error that lists the known ones."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"unknown run-config keys {unknown}; known: {sorted(known)}")
        values = {}
        for key, value in config.items():
            f = known[key]
            values[f.name] = type(getattr(cls(), f.name))(value)
        return cls(**values)

    def merge_rule(self) -> MergeRule:
        """The store's merge rule: robust for the `robust` spaces, else the plain count-weighted mean."""
        spaces = [s.strip() for s in self.robust.split(",") if s.strip()]
        if not spaces:
            return MergeRule()
        config = RobustConfig(self.robust_estimator, count_cap=self.robust_count_cap)
        return RobustMerge({space: config for space in spaces})

    def task(self) -> dict[str, Any]:
        """What every client needs to know to load the same data and encoder."""
        return {"dataset": self.dataset, "data-dir": self.data_dir, "encoder": self.encoder or self.dataset,
                "encoder-seed": self.encoder_seed, "glyph-classes": self.glyph_classes,
                "glyph-drawings": self.glyph_drawings, "data-seed": self.data_seed}


def wait_for_nodes(grid: Grid, needed: int, timeout: float, minimum: int | None = None) -> list[int]:
    """Wait up to `timeout` s for `needed` nodes (SuperNodes join asynchronously); then go on with at least
    `minimum` (default: `needed`), or fail."""
    minimum = needed if minimum is None else max(1, minimum)
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= needed:
            return nodes
        if time.monotonic() > deadline:
            if len(nodes) >= minimum:
                log.warning("only %d of %d Flower nodes connected after %.0f s; going on (min-nodes %d)",
                            len(nodes), needed, timeout, minimum)
                return nodes
            raise RuntimeError(f"only {len(nodes)} of {needed} Flower nodes connected after {timeout:.0f} s "
                               f"(min-nodes {minimum})")
        time.sleep(0.5)


def build_plan(grid: Grid, settings: FlowerSettings) -> tuple[ReconPlan, str, int]:
    """Ask a node for the data set and encoder, then plan the missions (seeded)."""
    described = describe(grid, settings.task(), settings.timeout)
    plan = plan_missions(described.class_ids, described.sizes, clients=settings.clients, rounds=settings.missions,
                         ways=settings.ways, shots=settings.shots, queries=settings.queries, seed=settings.seed)
    return plan, described.space, described.dim


def round_totals(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Final accuracy, the accuracy curve and the bytes (up, down with the evaluation syncs, per merge) of
    per-round logs (`round`, `classes_seen`, `accuracy`, `bytes_up`, `bytes_down`, `eval_bytes_down`)."""
    return {"final_accuracy": rounds[-1]["accuracy"] if rounds else None,
            "curve": [[r["classes_seen"], r["accuracy"]] for r in rounds],
            "bytes_up": sum(r["bytes_up"] for r in rounds),
            "bytes_down": sum(r["bytes_down"] + r["eval_bytes_down"] for r in rounds),
            "bytes_per_merge": sum(r["bytes_up"] + r["bytes_down"] + r["eval_bytes_down"] for r in rounds)
            / max(1, len(rounds))}


def run_prototype_averaging(
    grid: Grid, settings: FlowerSettings, store: PrototypeStore | None = None
) -> tuple[dict[str, Any], PrototypeStore]:
    """Run reconnaissance: describe, plan, `missions` rounds of merge + evaluation; results as a dict."""
    t0 = time.perf_counter()
    wait_for_nodes(grid, settings.clients, settings.wait_nodes, settings.min_nodes or 1)
    plan, space, dim = build_plan(grid, settings)
    if store is None:
        store = PrototypeStore(settings.db or None, merge_rule=settings.merge_rule())
    strategy = PrototypeAveraging(store, plan, space, task=settings.task(), dtype=settings.dtype,
                                  eval_clients=settings.eval_clients or None, min_nodes=settings.min_nodes or 1)
    strategy.start(grid, ArrayRecord(), num_rounds=plan.rounds, timeout=settings.timeout)
    rounds = strategy.report()
    info = store.info()
    results = {"method": "fedrecon", "transport": "flower", "settings": vars(settings).copy(), "space": space,
               "dim": dim, "rounds": rounds, **round_totals(rounds),
               "plan_key": strategy.plan_key, "lost_clients": sorted({k for r in rounds for k in r["lost"]}),
               "already_merged": sum(r["already_merged"] for r in rounds),
               "store": info, "wall_s": time.perf_counter() - t0}
    return results, store


def run_fedrecon(grid: Grid, settings: FlowerSettings, store: PrototypeStore | None = None) -> dict[str, Any]:
    """Run prototype averaging; a store it opened itself is closed, a given one left open."""
    results, used = run_prototype_averaging(grid, settings, store)
    if store is None:
        used.close()
    return results


RunFn = Callable[[Grid, Any, PrototypeStore | None], dict[str, Any]]


def publish(results: dict[str, Any], out: str = "") -> None:
    """Log the results as one JSON line, print it, and write them to `out` when set."""
    line = json.dumps(results, default=float)
    log.info("fedrecon results: %s", line)
    print(line, flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=float) + "\n")


def run_settings(grid: Grid, settings: FlowerSettings, store: PrototypeStore | None = None,
                 run: RunFn = run_fedrecon) -> dict[str, Any]:
    """Run (`run_fedrecon` unless told otherwise) and publish the results (a given store is left open)."""
    results = run(grid, settings, store)
    publish(results, settings.out)
    return results


def make_server_app(
    settings: FlowerSettings | None = None, sink: Callable[[dict[str, Any]], None] | None = None,
    store: PrototypeStore | None = None, *, run: RunFn = run_fedrecon,
    settings_type: type[FlowerSettings] = FlowerSettings,
) -> ServerApp:
    """A ServerApp; with `settings` it ignores the run config (Python-API simulation), `sink` gets results,
    `store` (optional) is the store to merge into. `run` and `settings_type` let another app (the
    experiments' baselines) run its own methods on the same settings and plan."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = settings or settings_type.from_config(dict(context.run_config))
        results = run_settings(grid, chosen, store, run)
        if sink is not None:
            sink(results)

    return server_app


app = make_server_app()
