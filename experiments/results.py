"""Results of an experiment: summary statistics, results.json, CSV, markdown table and PNG plots."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "fedrecon-results/1"


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 95% normal-approximation half-width over runs (0 for a single run)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), float(half)


def _curve(runs: list[dict[str, Any]], value: Any) -> list[list[float]]:
    """[[classes_seen, mean, ci95], ...] by round index over the runs that reached it."""
    out = []
    for i in range(max(len(r["rounds"]) for r in runs)):
        rows = [r["rounds"][i] for r in runs if len(r["rounds"]) > i]
        vals = [v for v in (value(row) for row in rows) if v is not None]
        if not vals:
            continue
        m, ci = mean_ci95(vals)
        out.append([float(np.mean([row["classes_seen"] for row in rows])), round(m, 4), round(ci, 4)])
    return out


def summarize_method(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method numbers over its runs: final accuracy, curves, bytes, update time, wall time."""
    final, final_ci = mean_ci95([r["rounds"][-1]["mean"] for r in runs])
    server_final, _ = mean_ci95([r["rounds"][-1]["server"] for r in runs])
    groups = sorted({g for r in runs for row in r["rounds"] for g in row["groups"]})
    n_rounds = max(len(r["rounds"]) for r in runs)
    per_merge = [[float(np.mean([r["rounds"][i][k] for r in runs if len(r["rounds"]) > i]))
                  for k in ("bytes_up", "bytes_down")] for i in range(n_rounds)]
    local = [v for r in runs for row in r["rounds"] for v in row["local"].values()]
    timed = [r for r in runs if r.get("cold", True)] or runs  # runs that embedded their own training images
    return {
        "runs": len(runs),
        "final_accuracy": round(final, 4),
        "final_ci95": round(final_ci, 4),
        "final_server_accuracy": round(server_final, 4),
        "curve": _curve(runs, lambda row: row["mean"]),
        "server_curve": _curve(runs, lambda row: row["server"]),
        "group_curves": {g: _curve(runs, lambda row, g=g: row["groups"].get(g)) for g in groups},
        "local_accuracy": round(mean_ci95(local)[0], 4) if local else None,
        "local_curve": _curve(runs, lambda row: float(np.mean(list(row["local"].values()))) if row["local"]
                              else None),
        "bytes_up": float(np.mean([r["bytes_up"] for r in runs])),
        "bytes_down": float(np.mean([r["bytes_down"] for r in runs])),
        "bytes_per_merge": per_merge,
        "update_ms_per_class": round(float(np.mean([r["update_ms_per_class"] for r in timed])), 4),
        "embed_ms_per_class": round(float(np.mean([r.get("embed_ms_per_class", 0.0) for r in timed])), 4),
        "merge_ms_per_class": round(float(np.mean([r.get("merge_ms_per_class", r["update_ms_per_class"])
                                                   for r in timed])), 4),
        "timed_runs": len(timed),
        "wall_seconds": round(float(sum(r["wall_seconds"] for r in runs)), 3),
        "per_run": runs,
    }


def comparisons(methods: dict[str, dict[str, Any]]) -> dict[str, float]:
    """fedrecon's headline numbers beside the baselines that ran (measured values; no pass/fail)."""
    fed = methods.get("fedrecon")
    if fed is None:
        return {}
    out = {"fedrecon_final_accuracy": fed["final_accuracy"]}
    for other in ("centralized", "lower", "upper"):
        if other in methods:
            out[f"fedrecon_minus_{other}_pp"] = round(fed["final_accuracy"] - methods[other]["final_accuracy"], 4)
    out["fedrecon_update_ms_per_class"] = fed["update_ms_per_class"]
    # the same without the encoder's forward pass: prototype update + push + server merge + pull
    out["fedrecon_update_ms_per_class_excluding_embedding"] = fed["merge_ms_per_class"]
    return out


def reference_line(anchors: dict[str, Any]) -> str | None:
    """'reference: paper ~86%, ANML 63.8% ... (published, after N classes)'; None without anchors."""
    if not anchors:
        return None
    points = sorted({int(x) for x, _ in anchors.values()})
    names = ", ".join(f"{name} {'~' if name == 'paper' else ''}{y:g}%" for name, (_, y) in anchors.items())
    return f"reference: {names} (published figures after {'/'.join(map(str, points))} classes, not measured here)"


def summarize(config: dict[str, Any], data: Any, encoder: Any, per_method: dict[str, list[dict[str, Any]]],
              schedules: list[dict[str, Any]], planned: dict[str, int] | None = None,
              data_dir: str | None = None) -> dict[str, Any]:
    """The results document written as results.json (`status` incomplete until every planned run finished)."""
    methods = {m: summarize_method(runs) for m, runs in per_method.items() if runs}
    finished = sum(len(runs) for runs in per_method.values())
    total = sum(planned.values()) if planned is not None else finished
    return {
        "schema": SCHEMA,
        "experiment": config["experiment"]["name"],
        "title": f"{config['experiment'].get('title') or config['experiment']['name']}: {data.name}",
        "status": "complete" if finished >= total else "incomplete",
        "finished_runs": finished,
        "planned_runs": total,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": config,
        "data_dir": data_dir,
        "dataset": {"name": data.name, "classes": len(data.class_ids), "images": len(data),
                    "meta": {k: v for k, v in data.meta.items() if isinstance(v, str | int | float | list)}},
        "encoder": {"fingerprint": encoder.fingerprint, "dim": encoder.dim,
                    "dataset": encoder.config.get("dataset"), "image_size": encoder.config.get("image_size")},
        "schedules": schedules,
        "anchors": config.get("anchors", {}),
        "methods": methods,
        "comparisons": comparisons(methods),
    }


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


def title(results: dict[str, Any]) -> str:
    """`<experiment or protocol>: <data set>`; a run on another data set (a folder) never takes the config name."""
    return results.get("title") or f"{results['experiment']}: {results['dataset']['name']}"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per method: runs, final accuracy +- ci95, server accuracy, bytes, update time, wall time."""
    lines = [f"### {title(results)} ("
             f"{results['schedules'][0]['classes'] if results['schedules'] else '?'} classes, "
             f"encoder {results['encoder']['fingerprint']})", "",
             f"status: {results.get('status', 'complete')}, {results.get('finished_runs', '?')} of "
             f"{results.get('planned_runs', '?')} method runs finished", "",
             "| method | runs | final accuracy % | server % | bytes up | bytes down | update ms/class "
             "(embedding + rest) | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {m['runs']} | {m['final_accuracy']:.2f} ± {m['final_ci95']:.2f} | "
                     f"{m['final_server_accuracy']:.2f} | {_fmt_bytes(m['bytes_up'])} | {_fmt_bytes(m['bytes_down'])} "
                     f"| {m['update_ms_per_class']:.2f} ({m['embed_ms_per_class']:.2f} + "
                     f"{m['merge_ms_per_class']:.2f}) "
                     f"| {m['wall_seconds']:.1f} |")
    groups = {(n, g): c for n, m in results["methods"].items() for g, c in m["group_curves"].items()}
    if groups:
        lines += ["", "| method | group | server accuracy % after the last merge |", "|---|---|---:|"]
        lines += [f"| {n} | {g} | {c[-1][1]:.2f} ± {c[-1][2]:.2f} |" for (n, g), c in groups.items() if c]
    reference = reference_line(results.get("anchors", {}))
    if reference:
        lines += ["", reference]
    lines += ["", "update ms/class: each method's first run, embedding its own training images (later runs reuse "
              "cached embeddings of the same frozen encoder)"]
    return "\n".join(lines)


def write_csv(results: dict[str, Any], path: Path) -> Path:
    """One row per method and merge: classes seen, mean accuracy, ci95, server accuracy, bytes per merge."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "merge", "classes_seen", "mean_accuracy", "ci95", "server_accuracy",
                    "bytes_up", "bytes_down"])
        for name, m in results["methods"].items():
            for i, (point, server) in enumerate(zip(m["curve"], m["server_curve"], strict=False)):
                up, down = m["bytes_per_merge"][i] if i < len(m["bytes_per_merge"]) else (0, 0)
                w.writerow([name, i, point[0], point[1], point[2], server[1], up, down])
    return path


def identical_to(series: dict[str, Any]) -> dict[str, str]:
    """Name -> the first earlier name whose series is exactly equal (such lines would hide each other)."""
    out: dict[str, str] = {}
    names = list(series)
    for i, name in enumerate(names):
        for earlier in names[:i]:
            if earlier not in out and np.array_equal(np.asarray(series[name]), np.asarray(series[earlier])):
                out[name] = earlier
                break
    return out


def _line_style(i: int, hidden_behind: str | None) -> dict[str, Any]:
    """Distinct marker and dash per line; a line equal to an earlier one gets hollow, larger markers."""
    style = {"marker": "os^vDx"[i % 6], "ms": 4, "ls": ["-", "--", "-.", ":"][i % 4]}
    if hidden_behind:
        style.update(ms=9, mfc="none", mew=1.5)
    return style


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """accuracy.png (accuracy vs classes seen, with references) and bytes.png (cumulative bytes vs classes seen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods = {n: m for n, m in results["methods"].items() if len(m["curve"])}
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    same = identical_to({n: [p[:2] for p in m["curve"]] for n, m in methods.items()})
    for i, (name, m) in enumerate(methods.items()):
        c = np.asarray(m["curve"], dtype=np.float64)
        label = f"{name} (identical to {same[name]})" if name in same else name
        ax.plot(c[:, 0], c[:, 1], label=label, **_line_style(i, same.get(name)))
        ax.fill_between(c[:, 0], c[:, 1] - c[:, 2], c[:, 1] + c[:, 2], alpha=0.2)
        for g, gc in m["group_curves"].items():
            gc = np.asarray(gc, dtype=np.float64)
            if len(gc):
                ax.plot(gc[:, 0], gc[:, 1], ls="--", lw=1, label=f"{name} (server, {g})")
    for name, (x, y) in results.get("anchors", {}).items():
        ax.scatter([x], [y], marker="*", s=120, zorder=5, label=f"reference: {name} {y:g}% (published)")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("accuracy over all classes seen (%)")
    ax.set_ylim(0, 100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title(results))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    moved = {n: np.cumsum(np.asarray(m["bytes_per_merge"], dtype=np.float64).sum(1)) for n, m in methods.items()
             if np.asarray(m["bytes_per_merge"]).sum() > 0}
    same = identical_to(moved)
    for i, (name, total) in enumerate(moved.items()):
        x = [p[0] for p in methods[name]["curve"]][: len(total)]
        label = f"{name} (identical to {same[name]})" if name in same else name
        ax.plot(x, total[: len(x)], label=label, **_line_style(i, same.get(name)))
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("classes seen")
    ax.set_ylabel("bytes moved so far (up + down)")
    ax.set_title(f"{title(results)}: communication (raw-image uploads included)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "bytes.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_all(results: dict[str, Any], out: str | Path) -> list[Path]:
    """results.json, results.csv, summary.md, accuracy.png, bytes.png under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [_write_atomic(out / "results.json", json.dumps(results, indent=1, default=_json_default))]
    paths.append(write_csv(results, out / "results.csv"))
    paths.append(_write_atomic(out / "summary.md", markdown_table(results) + "\n"))
    paths += plot(results, out)
    return paths


def _write_atomic(path: Path, text: str) -> Path:
    """Write via a temporary file and a rename, so a stopped run never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
