"""Real Omniglot PNGs written from `images_evaluation.zip` into an ImageFolder tree, as a user would have them."""

from __future__ import annotations

import zipfile
from pathlib import Path


def folder_name(class_id: str) -> str:
    """`Alphabet/characterNN` -> a folder name (`Alphabet__characterNN`)."""
    return class_id.replace("/", "__")


def write_pngs(data_root: Path, out: Path, classes: int, train: int = 15, test: int = 5,
               start: int = 0) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Extract `classes` characters (from the `start`-th, zip order) into `out/train/<class>/` and `out/test/<class>/`.

    The first `train` drawings of each class (sorted file order, as the loader reads them) go to train/,
    the next `test` to test/. Returns ({loader class id: train files}, {loader class id: test files}).
    """
    zip_path = data_root / "omniglot" / "images_evaluation.zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        by_class: dict[str, list[str]] = {}
        for n in names:
            parts = n.split("/")
            by_class.setdefault(f"{parts[-3]}/{parts[-2]}", []).append(n)
        chosen = list(by_class)[start : start + classes]
        train_files: dict[str, list[Path]] = {}
        test_files: dict[str, list[Path]] = {}
        for cid in chosen:
            for split, picked, target in (("train", by_class[cid][:train], train_files),
                                          ("test", by_class[cid][train : train + test], test_files)):
                folder = out / split / folder_name(cid)
                folder.mkdir(parents=True, exist_ok=True)
                target[cid] = []
                for n in picked:
                    path = folder / n.split("/")[-1]
                    path.write_bytes(zf.read(n))
                    target[cid].append(path)
    return train_files, test_files
