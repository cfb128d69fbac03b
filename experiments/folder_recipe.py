"""`pretrain --dataset folder` works first time: the recipe is sized to the folder and checked before any step.

Ways, queries and validation ways default to what the folder holds (at most 60 / 5 / 20); given values that
cannot fit are refused in one line naming the flag, before training. The colour mode is detected from the
images unless `--mode` is given: any colourful image makes the folder RGB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from fedrecon.client.data.images import ImageSet

VAL_SHOTS, VAL_QUERIES = 1, 5  # the validation episodes of `pretrain.validate`
DEFAULT_WAYS, DEFAULT_QUERIES, DEFAULT_VAL_WAYS = 60, 5, 20


def add_folder_arguments(p: argparse.ArgumentParser) -> None:
    """--mode, --invert and --val-fraction of `pretrain --dataset folder`."""
    p.add_argument("--mode", default=None, choices=["L", "RGB"],
                   help="folder: gray (L) or colour inputs; unset: RGB if any image is colourful, else L")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=False,
                   help="folder: invert gray images (dark ink on light paper -> bright strokes, as for Omniglot)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="folder: classes held out for validation")


def detect_mode(root: str | Path, sample: int = 64) -> str:
    """`RGB` if any of up to `sample` images (spread over the classes) has over 5% colourful pixels, else `L`."""
    from fedrecon.client.data.folder import folder_classes

    classes = list(folder_classes(root).values())
    files = [c[k] for k in range(max(len(c) for c in classes)) for c in classes if k < len(c)][:sample]
    for path in files:
        with Image.open(path) as image:
            small = image.convert("RGB")
            small.thumbnail((64, 64))
        rgb = np.asarray(small, dtype=np.int16)
        if float(np.mean(rgb.max(axis=2) - rgb.min(axis=2) > 40)) > 0.05:
            return "RGB"
    return "L"


def _per_class(data: ImageSet) -> dict[str, int]:
    return {c: data.count(c) for c in data.class_ids}


def fit_recipe(args: argparse.Namespace, train: ImageSet, val: ImageSet | None,
               val_desc: str) -> tuple[ImageSet | None, str]:
    """Fill unset --ways/--queries/--val-ways from the data; refuse (ValueError) a recipe the folder cannot feed.

    Returns the validation set and its description: none when --val-ways is unset and fewer than 2 held-out
    classes could fill a validation episode (said so in the description). Other data sets get fixed defaults.
    """
    if args.dataset != "folder":
        fill_defaults(args)
        return val, val_desc
    counts = _per_class(train)
    if args.queries is None:
        args.queries = max(1, min(DEFAULT_QUERIES, min(counts.values()) - args.shots))
    need = args.shots + args.queries
    short = sorted((n, c) for c, n in counts.items() if n < need)
    if short:
        raise ValueError(f"--shots {args.shots} + --queries {args.queries} need {need} images in every training "
                         f"class; {short[0][1]!r} has {short[0][0]} ({len(short)} classes too small): lower "
                         "--queries or --shots, or add images")
    if args.ways is None:
        args.ways = min(DEFAULT_WAYS, len(counts))
    if args.ways > len(counts):
        raise ValueError(f"--ways {args.ways}: the folder has {len(counts)} training classes after holding out "
                         f"{len(val.class_ids) if val else 0} for validation; use --ways {len(counts)} or fewer")
    if val is None:
        args.val_ways = args.val_ways or DEFAULT_VAL_WAYS
        return val, val_desc
    usable = sum(n >= VAL_SHOTS + VAL_QUERIES for n in _per_class(val).values())
    if args.val_ways is None and usable < 2:
        args.val_ways = DEFAULT_VAL_WAYS
        return None, (f"none: {usable} held-out class(es) with {VAL_SHOTS + VAL_QUERIES} images, a validation "
                      "episode needs 2 (raise --val-fraction)")
    if args.val_ways is None:
        args.val_ways = min(DEFAULT_VAL_WAYS, usable)
    if args.val_ways < 2 or args.val_ways > usable:
        raise ValueError(f"--val-ways {args.val_ways}: {usable} held-out classes have the {VAL_SHOTS + VAL_QUERIES} "
                         f"images a validation episode needs (2 or more are required); use --val-ways {usable} or "
                         "fewer, raise --val-fraction, or --val-fraction 0 for no validation")
    return val, val_desc


def fill_defaults(args: argparse.Namespace) -> None:
    """The fixed defaults of the other data sets (60 ways, 5 queries, 20 validation ways)."""
    args.ways = DEFAULT_WAYS if args.ways is None else args.ways
    args.queries = DEFAULT_QUERIES if args.queries is None else args.queries
    args.val_ways = DEFAULT_VAL_WAYS if args.val_ways is None else args.val_ways
