"""Your own images in the torchvision `ImageFolder` layout: `ROOT/<class name>/<image files>`.

Class ids are the sub-folder names; images may sit in nested folders below their class folder.
Every image goes through the encoder's preprocessing (`fedrecon.client.preprocess.to_pixels`), so a
folder of raw Omniglot PNGs loads exactly as the Omniglot loader would load the same drawings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedrecon.client.data.images import DataError, ImageSet, read_pixels
from fedrecon.client.preprocess import Preprocessing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LAYOUT = "ROOT/<class name>/<image files> (.png, .jpg, ...)"


def is_image(path: Path) -> bool:
    """True for a file with a known image suffix (hidden files are skipped)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def images_under(folder: Path) -> list[Path]:
    """Image files below `folder` (recursive), sorted by path."""
    return sorted(p for p in folder.rglob("*") if is_image(p) and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def folder_classes(root: str | Path) -> dict[str, list[Path]]:
    """{class name: image files} of an ImageFolder root; DataError naming the layout if it is not one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (expected {LAYOUT})")
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = images_under(d)
        if not files:
            raise DataError(f"{d}: class folder without images (expected {LAYOUT})")
        classes[d.name] = files
    loose = sorted(p.name for p in root.iterdir() if is_image(p))
    if not classes:
        hint = f"; it holds loose images such as {loose[:3]}: give --label NAME to learn them as one class" \
            if loose else ""
        raise DataError(f"{root}: no class sub-folders (expected {LAYOUT}){hint}")
    if loose:  # never drop images silently
        raise DataError(f"{root}: {len(loose)} images lie outside the class folders (e.g. {loose[:3]}); move them "
                        f"into a class folder, or learn them with --label NAME")
    return classes


def labelled_files(paths: Sequence[str | Path], label: str | None = None) -> list[tuple[Path, str]]:
    """(file, class id) pairs: each path an ImageFolder root, or (with `label`) image files or one-class folders."""
    if not paths:
        raise DataError("no images given (expected an ImageFolder root, or image files with --label)")
    out: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if label is not None:
            if path.is_dir():
                files = images_under(path)
                if not files:
                    raise DataError(f"{path}: folder without images")
            elif path.exists():
                if not is_image(path):
                    raise DataError(f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
                files = [path]
            else:
                raise DataError(f"{path}: no such file or folder")
            out += [(f, label) for f in files]
        else:
            if path.is_file():
                raise DataError(f"{path}: a single image needs --label NAME (or give an ImageFolder root: {LAYOUT})")
            out += [(f, name) for name, files in folder_classes(path).items() for f in files]
    return out


def read_images(files: Iterable[Path], pre: Preprocessing, progress: bool = False) -> np.ndarray:
    """uint8 (N, C, S, S) model pixels of image files under `pre`."""
    files = list(files)
    bar = tqdm(files, desc="reading images", unit="img", disable=not progress or len(files) < 200, leave=False)
    pixels = [read_pixels(f, pre) for f in bar]
    if not pixels:
        return np.zeros((0, pre.channels, pre.size, pre.size), np.uint8)
    return np.stack(pixels)


def load_folder(root: str | Path, pre: Preprocessing, progress: bool = True) -> ImageSet:
    """Every image of an ImageFolder root as an `ImageSet` (class ids = sub-folder names)."""
    classes = folder_classes(root)
    class_ids = list(classes)
    files = [f for c in class_ids for f in classes[c]]
    labels = np.concatenate([np.full(len(classes[c]), i) for i, c in enumerate(class_ids)])
    meta = {"dataset": "folder", "source": str(Path(root).expanduser()), "preprocessing": pre.to_dict()}
    return ImageSet(class_ids, read_images(files, pre, progress), labels, name=f"folder:{Path(root).name}", meta=meta)


def ignored_entries(paths: Sequence[str | Path]) -> list[Path]:
    """What reading `paths` leaves out, so it can be reported: files that are not images, symlinked sub-folders."""
    out: list[Path] = []
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            base = Path(folder)
            out += [base / d for d in dirs if (base / d).is_symlink() and base != root]
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            out += [base / f for f in files if not f.startswith(".") and not is_image(base / f)]
    return sorted(out)
