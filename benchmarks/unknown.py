"""How well `classify --unknown auto` tells unseen classes from known ones, on real Omniglot.

Protocol: every class of a set; a random half is learned (15 drawings each, one prototype per class), the
other half is never seen; the last 5 drawings of every class are classified. The score of a query is its
squared distance to the nearest prototype. The auto factor is chosen on `images_background` (the factor that
accepts 95% of known-class queries, relative to the median nearest-other-prototype distance) and then
measured on `images_evaluation`: AUROC of known vs unseen, unseen rejected and known accuracy lost.

    python -m fedrecon.benchmarks.unknown --data-dir ../shared/data/omniglot [--encoder omniglot] [--splits 5]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (the Mann-Whitney statistic)."""
    ordered = np.sort(negatives)
    below = np.searchsorted(ordered, positives, side="left")
    upto = np.searchsorted(ordered, positives, side="right")
    return float(np.mean((below + upto) / 2) / len(ordered))


def split_scores(embeddings: np.ndarray, labels: np.ndarray, seed: int, train: int = 15) -> dict[str, Any]:
    """One random half learned: distances and correctness of known queries, distances of unseen ones."""
    from fedrecon.client.unknown import nearest_other
    from fedrecon.proto.prototypes import nearest

    classes = np.unique(labels)
    known = np.sort(np.random.default_rng(seed).permutation(classes)[: len(classes) // 2])
    protos, test_rows = [], []
    for c in classes:
        rows = np.nonzero(labels == c)[0]
        if c in known:
            protos.append(embeddings[rows[:train]].mean(axis=0))
        test_rows.append(rows[train:])
    protos = np.stack(protos)
    test = np.concatenate(test_rows)
    found = nearest(embeddings[test], protos)
    distance, best = found.distances[:, 0], known[found.rows[:, 0]]
    is_known = np.isin(labels[test], known)
    return {"spread": float(np.median(nearest_other(protos))), "known_d": distance[is_known],
            "known_ok": best[is_known] == labels[test][is_known], "unseen_d": distance[~is_known]}


def measure(embeddings: np.ndarray, labels: np.ndarray, factor: float, splits: int) -> dict[str, Any]:
    """AUROC, unseen rejected, known accepted and accuracy lost at `factor` x spread, averaged over splits."""
    rows = []
    for seed in range(splits):
        s = split_scores(embeddings, labels, seed)
        tau = factor * s["spread"]
        accepted = s["known_d"] <= tau
        rows.append({"auroc": auroc(s["known_d"], s["unseen_d"]),
                     "unseen_rejected": float(np.mean(s["unseen_d"] > tau)), "known_accepted": float(np.mean(accepted)),
                     "known_accuracy": float(np.mean(s["known_ok"])),
                     "known_accuracy_with_unknown": float(np.mean(s["known_ok"] & accepted))})
    out = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
    out["known_accuracy_lost_pp"] = round(100 * (out["known_accuracy"] - out["known_accuracy_with_unknown"]), 2)
    return out


def calibrate(embeddings: np.ndarray, labels: np.ndarray, splits: int, accept: float = 0.95) -> float:
    """The factor (of the median nearest-other-prototype distance) that accepts `accept` of known queries."""
    ratios = []
    for seed in range(splits):
        s = split_scores(embeddings, labels, seed)
        ratios.append(s["known_d"] / s["spread"])
    return float(np.quantile(np.concatenate(ratios), accept))


def main(argv: list[str] | None = None) -> int:
    """Calibrate on images_background, measure on images_evaluation; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding images_background/evaluation.zip")
    parser.add_argument("--encoder", default="omniglot")
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args(argv)
    from fedrecon.client.data.omniglot import load_omniglot
    from fedrecon.client.spaces import open_encoder
    from fedrecon.client.unknown import AUTO_FACTOR

    encoder = open_encoder(args.encoder, device="cpu")
    sets = {}
    for name, background in (("background", True), ("evaluation", False)):
        data = load_omniglot(args.data_dir, background=background)
        sets[name] = (encoder.embed(data.pixels), data.labels)
    chosen = calibrate(*sets["background"], args.splits)
    print(json.dumps({"encoder": encoder.fingerprint, "calibrated_factor": round(chosen, 4), "auto_factor": AUTO_FACTOR,
                      "background": measure(*sets["background"], AUTO_FACTOR, args.splits),
                      "evaluation": measure(*sets["evaluation"], AUTO_FACTOR, args.splits)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
