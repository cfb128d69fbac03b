"""fedrecon (prototype averaging) beside Flower's FedAvg, on the Simulation Engine with the same Conv4,
data and missions: accuracy after each merge, bytes per merge, wall time. Prints JSON (and a table).

    python -m fedrecon.benchmarks.flower_fedavg --clients 5 --missions 3 --encoder glyphs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def run_one(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """One Flower simulation of `method` on the shared settings; its results dict."""
    from fedrecon.experiments.flower_app import ExperimentSettings, simulate

    settings = ExperimentSettings(dataset=args.dataset, data_dir=args.data_dir, encoder=args.encoder,
                                  glyph_classes=args.glyph_classes, clients=args.clients, missions=args.missions,
                                  ways=args.ways, shots=args.shots, queries=args.queries, seed=args.seed, method=method,
                                  epochs=args.epochs, lr=args.lr, timeout=3600.0)
    t0 = time.perf_counter()
    r = simulate(settings)
    return {"method": method, "final_accuracy": r["final_accuracy"], "curve": r["curve"],
            "bytes_up": r["bytes_up"], "bytes_down": r["bytes_down"], "bytes_per_merge": r["bytes_per_merge"],
            "app_wall_s": round(r["wall_s"], 2), "wall_s": round(time.perf_counter() - t0, 2),
            "space": r["space"], **({"model_bytes": r["model_bytes"]} if "model_bytes" in r else {})}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the side-by-side figures."""
    lines = ["| method | final accuracy | accuracy per merge | bytes per merge | wall s |",
             "|---|---|---|---|---|"]
    for r in rows:
        curve = ", ".join(f"{a * 100:.1f}% @{n}" for n, a in r["curve"])
        lines.append(f"| {r['method']} | {r['final_accuracy'] * 100:.1f}% | {curve} | {r['bytes_per_merge']:,.0f} | "
                     f"{r['app_wall_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both methods and print the JSON figures (then the table on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="glyphs", choices=["glyphs", "omniglot"])
    parser.add_argument("--data-dir", default=str(Path(".fedrecon-cache").resolve()))
    parser.add_argument("--encoder", default="glyphs", help="shipped name, checkpoint path, or random")
    parser.add_argument("--glyph-classes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--missions", type=int, default=3)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=50, help="fedavg local epochs per mission")
    parser.add_argument("--lr", type=float, default=1e-3, help="fedavg Adam learning rate")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    rows = [run_one(m, args) for m in ("fedrecon", "fedavg")]
    figures = {"benchmark": "flower_fedavg", "dataset": args.dataset, "encoder": args.encoder,
               "clients": args.clients, "missions": args.missions, "ways": args.ways, "shots": args.shots,
               "queries": args.queries, "seed": args.seed, "fedavg_epochs": args.epochs, "methods": rows}
    print(json.dumps(figures))
    print(table(rows), file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
