"""Data sets and encoders for experiments, picked by the `[dataset]` table of an experiment config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrecon.client.data.images import ImageSet, to_float

DEFAULT_SIZES = {"omniglot": (28, 1), "glyphs": (28, 1), "mini-imagenet": (84, 3), "folder": (28, 1)}


def load_encoder_spec(spec: str, dataset: str, image_size: int | None = None, seed: int = 0) -> Any:
    """`random` (an untrained, seeded Conv4 for the data set), a shipped name (`omniglot`, `glyphs`) or a path."""
    from fedrecon.client.encoder import Encoder, load_encoder

    if spec == "random":
        size, channels = DEFAULT_SIZES[dataset]
        return Encoder.random(dataset, image_size or size, channels, seed=seed)
    return load_encoder(spec)


def fed_recon_class_order(spec: dict[str, Any], data_dir: Path | None) -> list[str]:
    """WordNet ids in the order of `fed-recon-classes.txt` (first half base, second half field)."""
    from fedrecon.client.data.mini_imagenet import read_class_list

    path = spec.get("class_list")
    candidates = [Path(path)] if path else []
    for d in (spec.get("csv_dir"), data_dir):
        if d:
            candidates.append(Path(d) / "fed-recon-classes.txt")
    for c in candidates:
        if c.is_file():
            return [wnid for wnid, _ in read_class_list(c)]
    raise FileNotFoundError(f"fed-recon-classes.txt not found (looked at {[str(c) for c in candidates]}); "
                            "set dataset.class_list or dataset.csv_dir")


def load_dataset(spec: dict[str, Any], data_dir: str | Path | None, image_size: int,
                 needed: list[str] | None = None, preprocessing: Any = None) -> ImageSet:
    """The images a protocol draws from; `needed` limits mini-ImageNet loading to the classes used.

    `folder` (your own images, `ROOT/<class>/<images>`) is read with `preprocessing`, the encoder's.
    """
    name = spec.get("name")
    if name == "folder":
        from fedrecon.client.data.folder import load_folder
        from fedrecon.client.preprocess import native

        if data_dir is None:
            raise ValueError("dataset 'folder' needs --data-dir ROOT (ROOT/<class name>/<image files>)")
        return load_folder(data_dir, preprocessing or native("folder", image_size))
    if name == "glyphs":
        from fedrecon.client.data.glyphs import make_glyphs

        return make_glyphs(int(spec.get("classes", 100)), int(spec.get("drawings", 20)), int(spec.get("seed", 0)),
                           image_size, cache_dir=spec.get("cache_dir"))
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir (e.g. ../shared/data/{name})")
    if name == "omniglot":
        from fedrecon.client.data.omniglot import load_omniglot

        return load_omniglot(data_dir, bool(spec.get("background", False)), image_size,
                             tuple(spec.get("rotations", [0])), cache_dir=spec.get("cache_dir"))
    if name == "mini-imagenet":
        from fedrecon.client.data.mini_imagenet import load_mini_imagenet, load_mini_imagenet_classes

        csv_dir = spec.get("csv_dir")
        if needed is not None:
            return load_mini_imagenet_classes(data_dir, needed, image_size, csv_dir=csv_dir)
        return load_mini_imagenet(data_dir, spec.get("split", "test"), image_size, csv_dir=csv_dir)
    raise ValueError(f"unknown dataset {name!r}; known: glyphs, omniglot, mini-imagenet, folder")


def class_counts(data: ImageSet) -> dict[str, int]:
    """Images per class."""
    counts = np.bincount(data.labels, minlength=len(data.class_ids))
    return {cid: int(n) for cid, n in zip(data.class_ids, counts, strict=True)}


def take(data: ImageSet, class_id: str, idx: np.ndarray) -> np.ndarray:
    """Float32 [0, 1] images `idx` (positions within the class) of one class."""
    return to_float(data.pixels[data.indices(class_id)[np.asarray(idx, dtype=np.int64)]])
