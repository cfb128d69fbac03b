"""Score encoder checkpoints on the held-out background alphabets of `fedrecon pretrain --val-alphabets N`.

Every checkpoint gets the same episodes (seed 12345, as pretrain's validation), so differences are paired:
`python -m fedrecon.experiments.val_score --data-dir DIR --val-alphabets 5 base.pt other.pt ...` prints one
JSON line per checkpoint (accuracy, 95% interval, and the paired difference to the first, in points).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from fedrecon.client.encoder import load_encoder
from fedrecon.experiments import pretrain
from fedrecon.experiments.fewshot import episode_accuracies, summarize


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per checkpoint."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--val-alphabets", type=int, default=5)
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--episodes", type=int, default=1000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    args = argparse.ArgumentParser()
    pretrain.register(args)
    opts = ["--dataset", "omniglot", "--data-dir", a.data_dir, "--out", "-", "--val-alphabets", str(a.val_alphabets),
            "--image-size", "28"] + (["--cache-dir", a.cache_dir] if a.cache_dir else [])
    _, val, _ = pretrain.load_data(args.parse_args(opts))
    first = None
    for path in a.checkpoints:
        enc = load_encoder(path, device="cpu")
        acc = np.asarray(episode_accuracies(enc.embed(val.pixels), val.labels, a.ways, 1, 5, a.episodes, seed=12345))
        mean, ci = summarize(acc)
        row = {"path": path, "fingerprint": enc.fingerprint, "dim": enc.dim, f"val_{a.ways}way_1shot": round(mean, 4),
               "ci95": round(ci, 4)}
        if first is None:
            first = acc
        else:
            diff, diff_ci = summarize(acc - first)  # paired: the same episodes
            row["minus_first_pp"] = round(100 * diff, 2)
            row["paired_ci95_pp"] = round(100 * diff_ci, 2)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
