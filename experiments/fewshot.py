"""`fedrecon fewshot`: N-way K-shot accuracy of an encoder by nearest prototype, with a 95% interval.

Every image is embedded once; episodes then sample classes, supports and queries from the embeddings.
The last printed line is a JSON object with accuracy, ci95, ways, shots, queries, episodes, fingerprint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedrecon.client.data.images import ImageSet
from fedrecon.client.encoder import Encoder, load_encoder
from fedrecon.client.preprocess import Preprocessing
from fedrecon.proto.prototypes import nearest


def episode_accuracies(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Accuracy of each of `episodes` random episodes (prototype = mean of the K support embeddings)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    by_class = {c: np.nonzero(labels == c)[0] for c in classes}
    usable = np.array([c for c in classes if len(by_class[c]) >= shots + queries])
    if len(usable) < ways:
        raise ValueError(f"{ways}-way {shots}-shot {queries}-query needs {ways} classes with "
                         f"{shots + queries} images; only {len(usable)} have enough")
    acc = np.empty(episodes)
    for e in tqdm(range(episodes), desc=f"{ways}-way {shots}-shot", disable=not progress, mininterval=1):
        chosen = rng.choice(usable, ways, replace=False)
        picks = np.stack([rng.choice(by_class[c], shots + queries, replace=False) for c in chosen])
        support = embeddings[picks[:, :shots]]  # (ways, shots, dim)
        query = embeddings[picks[:, shots:].reshape(-1)]
        truth = np.repeat(np.arange(ways), queries)
        acc[e] = (nearest(query, support.mean(1)).rows[:, 0] == truth).mean()
    return acc


def summarize(acc: np.ndarray) -> tuple[float, float]:
    """(mean accuracy, 95% confidence half-width) over episodes."""
    return float(acc.mean()), float(1.96 * acc.std(ddof=1) / np.sqrt(len(acc))) if len(acc) > 1 else 0.0


def evaluate(encoder: Encoder, data: ImageSet, ways: int, shots: int, queries: int, episodes: int,
             seed: int = 0, progress: bool = False) -> dict:
    """Embed `data` once and run the episodes; returns the result dict printed by the command."""
    emb = encoder.embed(data.pixels)
    acc, ci = summarize(episode_accuracies(emb, data.labels, ways, shots, queries, episodes, seed, progress))
    return {"accuracy": acc, "ci95": ci, "ways": ways, "shots": shots, "queries": queries,
            "episodes": episodes, "seed": seed, "classes": len(data.class_ids), "dataset": data.name,
            "fingerprint": encoder.fingerprint}


def load_eval_data(dataset: str, data_dir: str | None, image_size: int, seed: int,
                   download: bool = False, preprocessing: Preprocessing | None = None) -> ImageSet:
    """Omniglot images_evaluation (no rotations), held-out glyph classes, or a folder (read as `preprocessing` says)."""
    if dataset == "omniglot":
        from fedrecon.client.data.omniglot import load_omniglot

        if not data_dir:
            raise SystemExit("--data-dir is required for omniglot")
        if download:
            from fedrecon.client.data.omniglot import download_omniglot

            download_omniglot(data_dir, background=False)
        return load_omniglot(data_dir, background=False, image_size=image_size)
    if dataset == "glyphs":
        from fedrecon.client.data.glyphs import make_glyphs

        return make_glyphs(200, 20, seed=seed + 1_000_003, image_size=image_size)
    if dataset == "folder":
        from fedrecon.client.data.folder import load_folder

        if not data_dir or preprocessing is None:
            raise SystemExit("--data-dir ROOT (ROOT/<class name>/<image files>) is required for folder")
        return load_folder(data_dir, preprocessing)
    raise SystemExit(f"unknown --dataset {dataset!r} (omniglot, glyphs or folder)")


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `fedrecon fewshot`."""
    parser.add_argument("--weights", default="omniglot",
                        help="shipped name (omniglot, glyphs), a .pt path, or `random` (untrained baseline)")
    parser.add_argument("--data-dir", default=None, help="directory holding the Omniglot zips or folders")
    parser.add_argument("--dataset", default="omniglot", choices=["omniglot", "glyphs", "folder"],
                        help="folder: your own images, --data-dir ROOT/<class name>/<image files>")
    parser.add_argument("--download", action="store_true", help="fetch the official Omniglot zip into --data-dir")
    parser.add_argument("--ways", type=int, default=20)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15, help="query images per class and episode")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON result here")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the result; the last line is JSON."""
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), 2) if not torch.cuda.is_available() else 4)
    t0 = time.time()
    encoder = Encoder.random(args.dataset, seed=args.seed) if args.weights == "random" else load_encoder(args.weights)
    data = load_eval_data(args.dataset, args.data_dir, encoder.config["image_size"], args.seed, args.download,
                          encoder.preprocessing)
    result = evaluate(encoder, data, args.ways, args.shots, args.queries, args.episodes, args.seed,
                      progress=True)
    result["weights"] = str(args.weights)
    result["seconds"] = round(time.time() - t0, 1)
    print(f"{args.ways}-way {args.shots}-shot on {data.name}: {100 * result['accuracy']:.2f}% "
          f"+- {100 * result['ci95']:.2f}% over {args.episodes} episodes")
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0
