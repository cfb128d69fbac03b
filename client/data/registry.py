"""The one data-set registry: a `[dataset]` spec (as in the experiment configs) -> an in-memory `ImageSet`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrecon.client.data.images import ImageSet

DATASETS = ("glyphs", "omniglot", "mini-imagenet", "folder")
DEFAULT_SIZES = {"omniglot": (28, 1), "glyphs": (28, 1), "mini-imagenet": (84, 3), "folder": (28, 1)}
GLYPH_DEFAULTS = {"classes": 100, "drawings": 20, "seed": 0}  # a glyph spec's keys when it leaves them out


def load_dataset(spec: dict[str, Any], data_dir: str | Path | None, image_size: int,
                 needed: list[str] | None = None, preprocessing: Any = None) -> ImageSet:
    """The images a spec names; `needed` limits mini-ImageNet loading to the classes used.

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

        glyphs = {**GLYPH_DEFAULTS, **spec}
        return make_glyphs(int(glyphs["classes"]), int(glyphs["drawings"]), int(glyphs["seed"]), image_size,
                           cache_dir=spec.get("cache_dir"))
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
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
