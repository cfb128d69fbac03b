"""mini-ImageNet (Vinyals et al. 2016; Ravi & Larochelle 2017 splits) in its three common layouts.

1. split CSVs (`train.csv`, `val.csv`, `test.csv`; rows `filename,label`) + an `images/` folder of JPEGs
   of any size; 2. `<split>/<wnid>/*.jpg` folders; 3. the pickle cache `mini-imagenet-cache-<split>.pkl`
   holding `image_data` uint8 (N, 84, 84, 3) and `class_dict` {wnid: [row indices]}.
Images become 3 x S x S uint8 (RGB), resized with antialiasing. Class ids are WordNet ids (`n01930112`).
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fedrecon.client.data.images import DataError, ImageSet, read_pixels
from fedrecon.client.preprocess import native, to_pixels

SPLITS = ("train", "val", "test")
LAYOUT = ("<dir>/<split>.csv + <dir>/images/*.jpg, or <dir>/<split>/<wnid>/*.jpg, "
          "or <dir>/mini-imagenet-cache-<split>.pkl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _decode_rgb(path: Path, size: int) -> np.ndarray:
    return read_pixels(path, native("mini-imagenet", size))


def read_split_csv(path: Path) -> dict[str, list[str]]:
    """{wnid: [file names]} from a Ravi & Larochelle split CSV (`filename,label` rows)."""
    if not path.is_file():
        raise DataError(f"{path}: split CSV not found (expected {LAYOUT})")
    out: dict[str, list[str]] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and row[0].strip().lower() == "filename"):
                continue
            if len(row) != 2:
                raise DataError(f"{path}: line {i + 1} is not `filename,label`: {row}")
            out.setdefault(row[1].strip(), []).append(row[0].strip())
    if not out:
        raise DataError(f"{path}: split CSV lists no images")
    return out


def read_class_list(path: str | Path) -> list[tuple[str, str]]:
    """(wnid, name) per line of `fed-recon-classes.txt` (`wnid name`), in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class list not found (expected lines `wnid name`)")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            rows.append((wnid, name.strip()))
    if not rows:
        raise DataError(f"{path}: class list is empty")
    return rows


def detect_layout(data_dir: Path, split: str, csv_dir: Path | None = None) -> str:
    """`pickle`, `csv` or `folders` for this split; DataError naming the expected layouts if none."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: mini-ImageNet directory not found (expected {LAYOUT})")
    if (data_dir / f"mini-imagenet-cache-{split}.pkl").is_file():
        return "pickle"
    if (data_dir / "images").is_dir() and ((csv_dir or data_dir) / f"{split}.csv").is_file():
        return "csv"
    if (data_dir / split).is_dir():
        return "folders"
    raise DataError(f"{data_dir}: no mini-ImageNet {split!r} split found (expected {LAYOUT})")


def _read_pickle(path: Path, wanted: Sequence[str] | None, size: int) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f)
        data, class_dict = blob["image_data"], blob["class_dict"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, OSError) as exc:
        raise DataError(f"{path}: not a mini-ImageNet pickle cache with image_data and class_dict ({exc})") from exc
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
        raise DataError(f"{path}: image_data must be uint8 (N, H, W, 3), got {data.dtype} {data.shape}")
    out = {}
    for wnid, rows in class_dict.items():
        if wanted is not None and wnid not in wanted:
            continue
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise DataError(f"{path}: empty class {wnid} in class_dict")
        if rows.max() >= len(data):
            raise DataError(f"{path}: class {wnid} names row {rows.max()} of {len(data)} images")
        pre = native("mini-imagenet", size)
        out[wnid] = np.stack([to_pixels(Image.fromarray(a), pre) for a in data[rows]])
    return out


def _class_files(data_dir: Path, split: str, layout: str, csv_dir: Path | None) -> dict[str, list[Path]]:
    """{wnid: image paths} for the csv and folders layouts, checking every file is there."""
    if layout == "csv":
        csv_path = (csv_dir or data_dir) / f"{split}.csv"
        files = {w: [data_dir / "images" / n for n in names] for w, names in read_split_csv(csv_path).items()}
        missing = [p for ps in files.values() for p in ps if not p.is_file()]
        if missing:
            raise DataError(f"{csv_path}: names {len(missing)} files not in {data_dir / 'images'}, "
                            f"e.g. {[p.name for p in missing[:3]]}")
        return files
    root = data_dir / split
    files = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not imgs:
            raise DataError(f"{d}: empty class (no .jpg images; expected {LAYOUT})")
        files[d.name] = imgs
    if not files:
        raise DataError(f"{root}: no class folders (expected {LAYOUT})")
    return files


def _load_split(data_dir: Path, split: str, size: int, csv_dir: Path | None,
                wanted: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    layout = detect_layout(data_dir, split, csv_dir)
    if layout == "pickle":
        return _read_pickle(data_dir / f"mini-imagenet-cache-{split}.pkl", wanted, size)
    files = _class_files(data_dir, split, layout, csv_dir)
    return {w: np.stack([_decode_rgb(p, size) for p in ps]) for w, ps in files.items()
            if wanted is None or w in wanted}


def _to_set(per_class: dict[str, np.ndarray], order: Sequence[str], name: str, meta: dict) -> ImageSet:
    pixels = np.concatenate([per_class[w] for w in order])
    labels = np.concatenate([np.full(len(per_class[w]), i) for i, w in enumerate(order)])
    return ImageSet(list(order), pixels, labels, name=name, meta=meta)


def load_mini_imagenet(data_dir: str | Path, split: str, image_size: int = 84,
                       csv_dir: str | Path | None = None) -> ImageSet:
    """One split (`train` 64 classes, `val` 16, `test` 20, 600 images each) from any of the 3 layouts.

    `csv_dir` holds the split CSVs when they are not beside `images/` (e.g. `../shared/data/mini-imagenet`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(data_dir).expanduser()
    per_class = _load_split(root, split, image_size, Path(csv_dir) if csv_dir else None)
    meta = {"dataset": "mini-imagenet", "split": split, "image_size": image_size, "source": str(root)}
    return _to_set(per_class, sorted(per_class), f"mini-imagenet:{split}", meta)


def load_mini_imagenet_classes(data_dir: str | Path, class_ids: Sequence[str], image_size: int = 84,
                               csv_dir: str | Path | None = None) -> ImageSet:
    """Every image of the named classes (e.g. `fed-recon-classes.txt` order), whatever split holds them."""
    root = Path(data_dir).expanduser()
    wanted = list(class_ids)
    found: dict[str, np.ndarray] = {}
    for split in SPLITS:
        try:
            detect_layout(root, split, Path(csv_dir) if csv_dir else None)
        except DataError:
            continue
        found.update(_load_split(root, split, image_size, Path(csv_dir) if csv_dir else None,
                                 [w for w in wanted if w not in found]))
    missing = [w for w in wanted if w not in found]
    if missing:
        raise DataError(f"{root}: classes not found in any split: {missing[:5]} ({len(missing)} missing; "
                        f"expected {LAYOUT})")
    meta = {"dataset": "mini-imagenet", "split": "by-class", "image_size": image_size, "source": str(root)}
    return _to_set(found, wanted, "mini-imagenet:classes", meta)
