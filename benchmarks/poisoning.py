"""Poisoning: 10 clients learn Omniglot classes, 1 is malicious; accuracy with clean, plain and robust merging.

Run: python -m fedrecon.benchmarks.poisoning --data-dir ../shared/data/omniglot [--encoder omniglot]

Each class's support drawings are split among a few randomly chosen clients; its remaining drawings
are queries. Every client pushes (count, mean) deltas into a `PrototypeStore`; the malicious client
instead pushes, for every class, a poisoned mean (scaled by --scale, random with the typical norm,
or sign-flipped) with counts inflated by --inflate. Accuracy = nearest merged prototype over all
classes. `clean`: everyone honest, plain merge; `plain` / `robust`: the worst attack under the plain
count-weighted merge and under the robust merge (`RobustMerge`, as `fedrecon server --robust`).
Prints JSON with `clean`, `plain`, `robust` (and per attack). `--data-dir glyphs` uses procedural glyphs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedrecon.benchmarks.harness import print_result
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.prototypes import nearest
from fedrecon.server.robust import RobustConfig, RobustMerge
from fedrecon.server.store import PrototypeStore

ATTACKS = ("scaled", "random", "sign_flip")
SPACE = "poison"


def load_images(data_dir: str, classes: int, drawings: int, seed: int, cache_dir: Path | None):
    """An ImageSet: Omniglot `images_evaluation` (a random subset of `classes`, 0 = all) or procedural glyphs."""
    if data_dir == "glyphs":
        from fedrecon.client.data.glyphs import make_glyphs

        return make_glyphs(classes or 100, drawings, seed=seed + 1000, cache_dir=cache_dir)
    from fedrecon.client.data.omniglot import load_omniglot

    images = load_omniglot(data_dir, background=False, cache_dir=cache_dir)
    if classes and classes < len(images.class_ids):
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(images.class_ids), size=classes, replace=False).tolist())
        images = images.subset([images.class_ids[i] for i in chosen])
    return images


def load_encoder_or_random(name: str):
    """The named/path encoder; a seeded random Conv4 when `name` is `random` (e.g. before weights ship)."""
    from fedrecon.client.encoder import Encoder, load_encoder

    if name == "random":
        return Encoder.random("omniglot", 28, 1, seed=0)
    return load_encoder(name)


def split(n_classes: int, n_images: int, support: int, clients: int, per_class: int, seed: int):
    """For each class: query indices and, per holding client, its support indices."""
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(n_classes):
        order = rng.permutation(n_images)
        holders = rng.choice(clients, size=per_class, replace=False)
        parts = np.array_split(order[:support], per_class)
        plan.append((order[support:], {int(h): p for h, p in zip(holders, parts, strict=True) if len(p)}))
    return plan


def client_deltas(embeddings: list[np.ndarray], plan: list, clients: int) -> list[dict[int, tuple[int, np.ndarray]]]:
    """Per client: class index -> (count, mean) of its support embeddings."""
    out: list[dict[int, tuple[int, np.ndarray]]] = [{} for _ in range(clients)]
    for c, (_, holders) in enumerate(plan):
        for client, idx in holders.items():
            out[client][c] = (len(idx), embeddings[c][idx].astype(np.float64).mean(axis=0))
    return out


def poison(honest: dict[int, tuple[int, np.ndarray]], n_classes: int, attack: str, scale: float, inflate: int,
           typical_norm: float, rng: np.random.Generator) -> dict[int, tuple[int, np.ndarray]]:
    """The malicious client's deltas for every class (its own data as the base where it has some)."""
    fallback = np.mean([m for _, m in honest.values()], axis=0) if honest else None
    out = {}
    for c in range(n_classes):
        count, base = honest.get(c, (1, fallback))
        if attack == "scaled":
            mean = scale * base
        elif attack == "sign_flip":
            mean = -base
        else:
            v = rng.normal(size=base.shape)
            mean = v / np.linalg.norm(v) * typical_norm
        out[c] = (count * inflate, mean)
    return out


def accuracy(class_ids: list[str], pulled, queries: list[np.ndarray]) -> float:
    """Nearest-prototype accuracy of all query embeddings against the pulled prototypes."""
    index = {cid: i for i, cid in enumerate(pulled.class_ids)}
    order = [index[c] for c in class_ids]
    prototypes = pulled.means[order]
    correct = total = 0
    for c, q in enumerate(queries):
        correct += int((nearest(q, prototypes).rows[:, 0] == c).sum())
        total += len(q)
    return correct / total


def merge(class_ids: list[str], deltas: list[dict[int, tuple[int, np.ndarray]]], robust: RobustConfig):
    """Push every client's deltas into a fresh store; return (plain pull, robust pull)."""
    with PrototypeStore(None) as store:
        for client, table in enumerate(deltas):
            if not table:
                continue
            keys = sorted(table)
            pushed = Deltas([class_ids[c] for c in keys], np.array([table[c][0] for c in keys]),
                            np.stack([table[c][1] for c in keys]))
            store.push(f"client{client}", 1, SPACE, pushed)
        plain = store.pull(SPACE)
        store.merge_rule = RobustMerge({SPACE: robust})  # the same contributions, merged robustly
        return plain, store.pull(SPACE)


def run(data_dir: str, encoder_name: str, classes: int = 0, clients: int = 10, per_class: int = 5,
        support: int = 15, drawings: int = 20, malicious: int = 1, scale: float = 10.0, inflate: int = 100,
        robust: RobustConfig | None = None, seed: int = 0, cache_dir: Path | None = None) -> dict:
    """The whole benchmark; returns the JSON-ready result."""
    robust = robust or RobustConfig(estimator="mean", count_cap=support)
    start = time.monotonic()
    images = load_images(data_dir, classes, drawings, seed, cache_dir)
    encoder = load_encoder_or_random(encoder_name)
    class_ids = list(images.class_ids)
    embeddings = [encoder.embed(images.images(c)) for c in tqdm(class_ids, desc="embed", file=sys.stderr,
                                                                 mininterval=2.0)]
    n_images = min(len(e) for e in embeddings)
    if support >= n_images:
        raise ValueError(f"--support {support} leaves no queries: classes have {n_images} images")
    plan = split(len(class_ids), n_images, support, clients, per_class, seed)
    queries = [embeddings[c][q] for c, (q, _) in enumerate(plan)]
    honest = client_deltas(embeddings, plan, clients)
    typical = float(np.median([np.linalg.norm(m) for t in honest for _, m in t.values()]))
    clean_plain, clean_robust = merge(class_ids, honest, robust)
    result: dict = {"clean": accuracy(class_ids, clean_plain, queries),
                    "robust_clean": accuracy(class_ids, clean_robust, queries), "attacks": {}}
    rng = np.random.default_rng(seed + 1)
    for attack in ATTACKS:
        deltas = list(honest)
        for bad in range(malicious):
            deltas[bad] = poison(honest[bad], len(class_ids), attack, scale, inflate, typical, rng)
        plain, robust_pull = merge(class_ids, deltas, robust)
        result["attacks"][attack] = {"plain": accuracy(class_ids, plain, queries),
                                     "robust": accuracy(class_ids, robust_pull, queries)}
    result["by_estimator"] = {}
    for name in ("trimmed", "median", "mean"):  # the same clients under each robust estimator
        config = RobustConfig(name, robust.trim, robust.count_cap, robust.norm_ratio, robust.outlier,
                              robust.min_clients)
        worst = 1.0
        for attack in ATTACKS:
            deltas = list(honest)
            for bad in range(malicious):
                deltas[bad] = poison(honest[bad], len(class_ids), attack, scale, inflate, typical,
                                     np.random.default_rng(seed + 1))
            worst = min(worst, accuracy(class_ids, merge(class_ids, deltas, config)[1], queries))
        result["by_estimator"][name] = {"clean": accuracy(class_ids, merge(class_ids, honest, config)[1], queries),
                                        "worst_attack": worst}
    result["plain"] = min(a["plain"] for a in result["attacks"].values())
    result["robust"] = min(a["robust"] for a in result["attacks"].values())
    result["robust_gap_pp"] = round(100 * (result["clean"] - result["robust"]), 2)
    result["within_2pp"] = result["robust_gap_pp"] <= 2.0
    result["setup"] = {"data": data_dir, "encoder": encoder_name, "space": encoder.fingerprint,
                       "classes": len(class_ids), "clients": clients, "malicious": malicious,
                       "clients_per_class": per_class, "support": support, "queries_per_class": n_images - support,
                       "scale": scale, "inflate": inflate,
                       "robust": {"estimator": robust.estimator, "trim": robust.trim, "count_cap": robust.count_cap,
                                  "norm_ratio": robust.norm_ratio, "outlier": robust.outlier}}
    result["seconds"] = round(time.monotonic() - start, 1)
    return {k: result[k] for k in ("clean", "plain", "robust", "robust_clean", "robust_gap_pp", "within_2pp",
                                   "attacks", "by_estimator", "setup", "seconds")}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="Omniglot folder (images_evaluation.zip), or 'glyphs'")
    parser.add_argument("--encoder", default="omniglot", help="shipped name, checkpoint path, or 'random'")
    parser.add_argument("--classes", type=int, default=0, help="evaluation classes to use (0: all)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--malicious", type=int, default=1)
    parser.add_argument("--clients-per-class", type=int, default=5, help="clients holding part of each class")
    parser.add_argument("--support", type=int, default=15, help="support drawings per class (the rest are queries)")
    parser.add_argument("--scale", type=float, default=10.0, help="factor of the scaled attack")
    parser.add_argument("--inflate", type=int, default=100, help="count inflation of the malicious client")
    parser.add_argument("--estimator", default="mean", choices=["trimmed", "median", "mean"])
    parser.add_argument("--count-cap", type=int, default=None, help="per-client count cap (default: --support)")
    parser.add_argument("--outlier", type=float, default=3.0)
    parser.add_argument("--norm-ratio", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "fedrecon")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if not 0 < args.malicious < args.clients or args.clients_per_class > args.clients:
        parser.error("need 0 < --malicious < --clients and --clients-per-class <= --clients")
    robust = RobustConfig(args.estimator, count_cap=args.support if args.count_cap is None else args.count_cap,
                          outlier=args.outlier, norm_ratio=args.norm_ratio)
    result = run(args.data_dir, args.encoder, args.classes, args.clients, args.clients_per_class, args.support,
                 malicious=args.malicious, scale=args.scale, inflate=args.inflate, robust=robust, seed=args.seed,
                 cache_dir=args.cache_dir)
    print_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
