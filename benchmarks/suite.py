"""`fedrecon bench [--quick] --out OUTDIR`: run every benchmark, write bench.json and bench.md, print the JSON.

Each benchmark measures its figure next to a reference in the same run and reports the ratio; the
table lists the headline figures with their targets. Nothing here asserts on time: a missed target
is a row marked "no", and the run still succeeds. A benchmark that fails is recorded with its error
and makes the exit status 1 (after the others have run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedrecon.benchmarks.common import machine

BENCHMARKS = ("wire", "merge", "pull", "client", "classify", "scale", "fedavg", "cluster")
MODULES = {"wire": "wire", "merge": "merge", "pull": "sync", "client": "client_cost", "classify": "classify",
           "scale": "scale", "fedavg": "fedavg", "cluster": "cluster"}

# (figure, reference figure or None, target text, check on the value or None, unit)
HEADLINES: list[tuple[str, str | None, str, Callable[[float], bool] | None, str]] = [
    ("wire.ratio_fp32_d64_b16", None, "<= 1.10", lambda v: v <= 1.10, "x raw fp32"),
    ("wire.ratio_fp16_d64_b16", None, "<= 0.55", lambda v: v <= 0.55, "x raw fp32"),
    ("wire.ratio_fp32_d64_b16_short_ids", None, "<= 1.10", lambda v: v <= 1.10, "x raw fp32"),
    ("wire.ratio_fp16_d64_b16_short_ids", None, "<= 0.55", lambda v: v <= 0.55, "x raw fp32"),
    ("wire.socket_ratio_fp32_d64_b16", None, "", None, "x raw fp32"),
    ("wire.socket_ratio_fp32_d64_b16_gzip", None, "<= 1.10", lambda v: v <= 1.10, "x raw fp32"),
    ("wire.socket_ratio_fp16_d64_b16_gzip", None, "<= 0.55", lambda v: v <= 0.55, "x raw fp32"),
    ("wire.accuracy.change_pp_float16", "wire.accuracy.accuracy_float32", "abs(change) < 0.1 pp",
     lambda v: abs(v) < 0.1, "pp"),
    ("wire.accuracy.change_pp_bfloat16", "wire.accuracy.accuracy_float32", "abs(change) < 0.1 pp",
     lambda v: abs(v) < 0.1, "pp"),
    ("merge.durable_updates_per_s_1_clients", "merge.inmemory_updates_per_s", "", None, "updates/s"),
    ("merge.durable_updates_per_s_8_clients", "merge.inmemory_updates_per_s", ">= 50,000",
     lambda v: v >= 50_000, "updates/s"),
    ("merge.durable_updates_per_s_32_clients", "merge.inmemory_updates_per_s", "", None, "updates/s"),
    ("merge.durable_vs_transport_ceiling", None, ">= 0.5", lambda v: v >= 0.5, "x no-op gRPC server"),
    ("merge.transport_ceiling_updates_per_s_8_clients", None, "", None, "updates/s"),
    ("merge.durable_stream_updates_per_s_8_clients", "merge.transport_ceiling_updates_per_s_8_clients",
     ">= 100,000 (goal)", lambda v: v >= 100_000, "updates/s"),
    ("merge.durable_stream_vs_transport_ceiling", None, ">= 0.5", lambda v: v >= 0.5, "x no-op gRPC server (unary)"),
    ("merge.durable_stream_vs_stream_ceiling", None, "", None, "x no-op PushStream server"),
    ("merge.durable_stream_server_cpu_us_per_push_8_clients", "merge.durable_server_cpu_us_per_push_8_clients", "",
     None, "us CPU"),
    ("merge.durable_server_cpu_us_per_push_8_clients", "merge.durable_client_cpu_us_per_push_8_clients", "", None,
     "us CPU"),
    ("merge.durable_idle_2core_estimate_updates_per_s_8_clients", None, "", None, "updates/s (estimate)"),
    ("merge.memory_server_updates_per_s_8_clients", "merge.inmemory_updates_per_s", "", None, "updates/s"),
    ("merge.sync_normal_updates_per_s_8_clients", "merge.durable_updates_per_s_8_clients", "", None, "updates/s"),
    ("merge.store_direct_durable_updates_per_s_8_threads", "merge.store_direct_memory_updates_per_s", "", None,
     "updates/s"),
    ("merge.inmemory_updates_per_s", None, "", None, "updates/s"),
    ("pull.full_1k_p50_ms", "pull.store_full_1k_p50_ms", "", None, "ms"),
    ("pull.full_10k_p50_ms", "pull.store_full_10k_p50_ms", "<= 50 ms", lambda v: v <= 50, "ms"),
    ("pull.full_10k_p99_ms", "pull.store_full_10k_p50_ms", "", None, "ms"),
    ("pull.full_10k_server_cpu_ms", "pull.full_10k_p50_ms", "", None, "ms CPU"),
    ("pull.full_10k_client_cpu_ms", "pull.full_10k_p50_ms", "", None, "ms CPU"),
    ("pull.full_100k_p50_ms", "pull.store_full_100k_p50_ms", "", None, "ms"),
    ("pull.incremental10_10k_p50_ms", "pull.full_10k_p50_ms", "", None, "ms"),
    ("client.ms_per_class", "client.icarl_ms_per_class", "", None, "ms"),
    ("client.speedup_vs_icarl", None, ">= 100x", lambda v: v >= 100, "x"),
    ("client.speedup_vs_lower", None, "", None, "x"),
    ("classify.batch_p50_ms_600", "classify.embed_batch_p50_ms", "", None, "ms / 100 queries"),
    ("classify.batch_p50_ms_10k", "classify.embed_batch_p50_ms", "", None, "ms / 100 queries"),
    ("classify.batch_p50_ms_100k", "classify.embed_batch_p50_ms", "", None, "ms / 100 queries"),
    ("scale.inproc_clients", None, "10,000", lambda v: v >= 10_000, "clients"),
    ("scale.inproc_seconds", "scale.numpy_reference_seconds", "", None, "s"),
    ("scale.inproc_peak_traced_mb", None, "", None, "MiB"),
    ("scale.flower.wall_s", None, "", None, "s"),
    ("scale.flower.peak_rss_mb", None, "", None, "MiB"),
    ("fedavg.bytes_ratio", None, "", None, "x (FedAvg / prototypes)"),
    ("cluster.sqlite.updates_per_s", None, "", None, "updates/s"),
    ("cluster.postgres_1_replicas.updates_per_s", "cluster.sqlite.updates_per_s", "", None, "updates/s"),
    ("cluster.postgres_2_replicas.updates_per_s", "cluster.sqlite.updates_per_s", "", None, "updates/s"),
    ("cluster.postgres_3_replicas.updates_per_s", "cluster.sqlite.updates_per_s", "", None, "updates/s"),
    ("cluster.postgres_3_replicas.server_cpu_us_per_push", "cluster.postgres_1_replicas.server_cpu_us_per_push", "",
     None, "us CPU (replicas)"),
    ("cluster.postgres_3_replicas.postgres_cpu_us_per_push", "cluster.postgres_1_replicas.postgres_cpu_us_per_push",
     "", None, "us CPU (PostgreSQL)"),
    ("cluster.postgres_3_replicas.idle_2core_estimate_updates_per_s", None, "", None, "updates/s (estimate)"),
    ("cluster.cross_replica_pull.p50_ms", None, "", None, "ms"),
]


def lookup(results: dict, key: str) -> Any:
    """A dotted key (`merge.durable_updates_per_s_8_clients`) in nested results, or None."""
    node: Any = results
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def headline_rows(results: dict) -> list[dict]:
    """The headline figures with reference, ratio, target and whether it is met."""
    rows = []
    for key, ref_key, target, check, unit in HEADLINES:
        value = lookup(results, key)
        reference = lookup(results, ref_key) if ref_key else None
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        ratio = value / reference if numeric and isinstance(reference, int | float) and reference else None
        met = check(value) if check is not None and numeric else None
        rows.append({"figure": key, "value": value, "unit": unit, "reference": ref_key, "reference_value": reference,
                     "ratio": ratio, "target": target, "met": met})
    return rows


def markdown(results: dict, command: str) -> str:
    """bench.md: the headline table, the command that made it and the machine it ran on."""
    m = results.get("machine", {})
    lines = [
        "# fedrecon benchmarks", "",
        f"Command: `{command}`  ", f"Machine: {m.get('nproc')} cores, {m.get('cpu_model')}, load average at start "
        f"{m.get('loadavg_at_start')}; Python {m.get('python')}, numpy {m.get('numpy')}, torch {m.get('torch')}, "
        f"grpcio {m.get('grpc')}  ", f"Mode: {'quick' if results.get('quick') else 'full'}; "
        f"total {results.get('seconds', 0):.0f} s", "",
        "| figure | value | unit | reference | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for row in headline_rows(results):
        ref = f"{row['reference']} = {_fmt(row['reference_value'])}" if row["reference"] else ""
        lines.append(f"| {row['figure']} | {_fmt(row['value'])} | {row['unit']} | {ref} | {_fmt(row['ratio'])} | "
                     f"{row['target']} | {_fmt(row['met']) if row['met'] is not None else ''} |")
    failed = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if failed:
        lines += ["", "Failed benchmarks:", *[f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in failed.items()]]
    return "\n".join(lines) + "\n"


def run_suite(quick: bool, out: Path, only: tuple[str, ...] = BENCHMARKS, data_dir: Path | None = None,
              flower_clients: int = 1_000, flower_timeout: float = 300.0, command: str = "fedrecon bench",
              wire_encoder: str = "omniglot") -> dict:
    """Run the selected benchmarks, write OUTDIR/bench.json and OUTDIR/bench.md; returns the results."""
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"quick": quick, "command": command, "machine": machine(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    extra: dict[str, dict[str, Any]] = {"wire": {"data_dir": data_dir, "encoder": wire_encoder,
                                                 "cache_dir": out / "cache"},
                                        "scale": {"flower_clients": flower_clients, "flower_timeout": flower_timeout}}
    start = time.perf_counter()
    for name in tqdm([b for b in BENCHMARKS if b in only], desc="fedrecon bench"):
        module = importlib.import_module(f"fedrecon.benchmarks.{MODULES[name]}")
        t0 = time.perf_counter()
        try:
            results[name] = module.run(quick=quick, **extra.get(name, {}))
        except Exception:  # noqa: BLE001 - record it, run the rest, fail at the end
            results[name] = {"error": traceback.format_exc()}
        results[name]["benchmark_seconds"] = time.perf_counter() - t0
    results["seconds"] = time.perf_counter() - start
    results["headlines"] = headline_rows(results)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(results, command))
    return results


def register(parser: argparse.ArgumentParser) -> None:
    """Add the bench options."""
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (well under a minute)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (default runs/bench)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--data-dir", type=Path, help="data folder with omniglot/ (wire accuracy on Omniglot-600)")
    parser.add_argument("--wire-encoder", default="omniglot",
                        help="encoder (shipped name or checkpoint path) for the float16/bfloat16 accuracy check")
    parser.add_argument("--flower-clients", type=int, default=1_000,
                        help="virtual clients for the Flower Simulation Engine run (0: skip; full run only)")
    parser.add_argument("--flower-timeout", type=float, default=300.0, help="seconds the Flower run may take")


def run(args: argparse.Namespace) -> int:
    """Run the suite, print bench.json, exit 1 if any benchmark failed."""
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    command = "fedrecon bench" + (" --quick" if args.quick else "") + f" --out {args.out}" + (
        f" --data-dir {args.data_dir}" if args.data_dir else "") + (
        f" --wire-encoder {args.wire_encoder}" if args.wire_encoder != "omniglot" else "") + (
        f" --only {args.only}" if set(only) != set(BENCHMARKS) else "")
    try:
        results = run_suite(args.quick, args.out, only, args.data_dir, args.flower_clients, args.flower_timeout,
                            command, args.wire_encoder)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    print(json.dumps(results, indent=2, default=str))
    failed = [k for k in only if "error" in results.get(k, {})]
    return 1 if failed else 0
