"""Score encoder checkpoints on the held-out background alphabets of `fedrecon pretrain --val-alphabets N`.

Every checkpoint gets the same episodes (seed 12345 by default, as pretrain's validation), so differences are
paired: `python -m fedrecon.experiments.val_score --data-dir DIR --val-alphabets 5 base.pt other.pt ...` prints
one JSON line per checkpoint (accuracy, 95% interval, and the paired difference to the first, in points).
`--all-classes` scores every held-out class at once instead (15-shot prototypes, 5 queries each, over
`--splits` random splits), the shape of the 600-class protocols. `--transform l2|cl2n` scores a normalised
embedding (each member of a combined encoder on its own; cl2n subtracts the training images' mean first).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fedrecon.client.encoder import Encoder, load_encoder, members
from fedrecon.experiments import pretrain
from fedrecon.experiments.fewshot import episode_accuracies, summarize
from fedrecon.proto.prototypes import nearest


def normalised(encoder: Encoder, embeddings: np.ndarray, transform: str, train_pixels: np.ndarray) -> np.ndarray:
    """`embeddings` with each member's part divided by its L2 norm (after subtracting its training mean: cl2n)."""
    if transform == "none":
        return embeddings
    centre = encoder.embed(train_pixels).mean(0) if transform == "cl2n" else np.zeros(encoder.dim, np.float32)
    parts = np.split(embeddings - centre, members(encoder.config), axis=1)
    return np.hstack([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts])


def all_class_accuracies(embeddings: np.ndarray, labels: np.ndarray, shots: int, queries: int,
                         splits: int) -> np.ndarray:
    """Accuracy over every class at once, per random split (first `shots` drawings make the prototype)."""
    classes = np.unique(labels)
    acc = np.empty(splits)
    for split in range(splits):
        rng = np.random.default_rng(split)
        picks = np.stack([rng.permutation(np.nonzero(labels == c)[0])[: shots + queries] for c in classes])
        prototypes = embeddings[picks[:, :shots]].mean(1)
        truth = np.repeat(np.arange(len(classes)), queries)
        acc[split] = (nearest(embeddings[picks[:, shots:].reshape(-1)], prototypes).rows[:, 0] == truth).mean()
    return acc


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per checkpoint."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--val-alphabets", type=int, default=5)
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=12345, help="episode seed (12345: pretrain's validation episodes)")
    p.add_argument("--all-classes", action="store_true", help="every held-out class at once, 15-shot prototypes")
    p.add_argument("--splits", type=int, default=20, help="random splits for --all-classes")
    p.add_argument("--transform", choices=["none", "l2", "cl2n"], default="none")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    args = argparse.ArgumentParser()
    pretrain.register(args)
    opts = ["--dataset", "omniglot", "--data-dir", a.data_dir, "--out", "-", "--val-alphabets", str(a.val_alphabets),
            "--image-size", "28"] + (["--cache-dir", a.cache_dir] if a.cache_dir else [])
    train, val, _ = pretrain.load_data(args.parse_args(opts))
    measure = "val_all_classes_15shot" if a.all_classes else f"val_{a.ways}way_1shot"
    first = None
    for path in a.checkpoints:
        enc = load_encoder(path, device="cpu")
        enc.embed(val.pixels[:15])  # warm-up: the first call pays one-off costs
        started = time.process_time()
        for i in range(0, 15 * 100, 15):
            enc.embed(val.pixels[i : i + 15])
        ms_per_class = (time.process_time() - started) * 1000 / 100  # one class = 15 images, one thread
        emb = normalised(enc, enc.embed(val.pixels), a.transform, train.pixels)
        labels = np.asarray(val.labels)
        acc = (all_class_accuracies(emb, labels, 15, 5, a.splits) if a.all_classes
               else np.asarray(episode_accuracies(emb, labels, a.ways, 1, 5, a.episodes, seed=a.seed)))
        mean, ci = summarize(acc)
        row = {"path": path, "fingerprint": enc.fingerprint, "dim": enc.dim, "bytes_per_class": 4 * enc.dim,
               "cpu_ms_per_class": round(ms_per_class, 2), "transform": a.transform, measure: round(mean, 4),
               "ci95": round(ci, 4)}
        if first is None:
            first = acc
        else:
            diff, diff_ci = summarize(acc - first)  # paired: the same episodes or splits
            row["minus_first_pp"] = round(100 * diff, 2)
            row["paired_ci95_pp"] = round(100 * diff_ci, 2)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
