"""Image containers and Pillow helpers shared by the data set loaders.

Every loader returns an `ImageSet`: uint8 pixels (N, C, H, W) held once in memory, an integer label
per image and the class id string of each label. Models see float32 in [0, 1] (`images()`); any
further normalisation belongs to the encoder's preprocessing config.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedrecon.client.preprocess import Preprocessing, to_pixels

if TYPE_CHECKING:
    from fedrecon.client.data.torch_dataset import ImageDataset

READABLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"}


class DataError(ValueError):
    """A data set on disk is missing, corrupt or not in the expected layout."""


@dataclass
class ImageSet:
    """Images of many classes: uint8 pixels (N, C, H, W), a label per image, class ids per label."""

    class_ids: list[str]
    pixels: np.ndarray
    labels: np.ndarray
    name: str = "images"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4 or self.pixels.dtype != np.uint8:
            raise ValueError(f"{self.name}: pixels must be uint8 (N, C, H, W), got {self.pixels.dtype} "
                             f"{self.pixels.shape}")
        if len(self.labels) != len(self.pixels):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.pixels)} images")
        if not self.class_ids or len(self.pixels) == 0:
            raise DataError(f"{self.name}: empty data set (no classes or no images)")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        counts = np.bincount(self.labels, minlength=len(self.class_ids))
        if len(counts) != len(self.class_ids) or (counts == 0).any():
            empty = [self.class_ids[i] for i in np.nonzero(counts == 0)[0][:5]]
            raise DataError(f"{self.name}: classes without images: {empty}")
        order = np.argsort(self.labels, kind="stable")
        self._order = order
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._index = {cid: i for i, cid in enumerate(self.class_ids)}
        if len(self._index) != len(self.class_ids):
            raise DataError(f"{self.name}: duplicate class ids")

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    def indices(self, class_id: str | int) -> np.ndarray:
        """Row indices of one class's images, in file order."""
        label = self._index[class_id] if isinstance(class_id, str) else int(class_id)
        return self._order[self._starts[label] : self._starts[label + 1]]

    def count(self, class_id: str | int) -> int:
        """Number of images of one class."""
        return len(self.indices(class_id))

    def images(self, class_id: str | int) -> np.ndarray:
        """One class's images as float32 (n, C, H, W) in [0, 1]."""
        return to_float(self.pixels[self.indices(class_id)])

    def subset(self, class_ids: Sequence[str], name: str | None = None) -> ImageSet:
        """A new set holding only `class_ids` (in that order), relabelled 0..k-1."""
        idx = [self.indices(c) for c in class_ids]
        labels = np.concatenate([np.full(len(i), k) for k, i in enumerate(idx)])
        return ImageSet(list(class_ids), self.pixels[np.concatenate(idx)], labels, name or self.name,
                        dict(self.meta))

    def torch_dataset(self) -> ImageDataset:
        """A `torch.utils.data.Dataset` view yielding (float image tensor, int label)."""
        from fedrecon.client.data.torch_dataset import ImageDataset

        return ImageDataset(self)


def to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]."""
    return pixels.astype(np.float32) * np.float32(1.0 / 255.0)


def decode_image(data: bytes, where: str) -> Image.Image:
    """Decode image bytes with Pillow; a clear DataError names the file if they are not an image."""
    if not data:
        raise DataError(f"{where}: empty file (0 bytes), not an image")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError as exc:
        raise DataError(f"{where}: not a readable image (Pillow does not recognise its format; "
                        f"{len(data)} bytes starting {data[:8]!r})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from exc
    if img.mode not in READABLE_MODES:
        raise DataError(f"{where}: unsupported image mode {img.mode!r} (expected one of {sorted(READABLE_MODES)})")
    return img


def read_pixels(path: str | Path, pre: Preprocessing) -> np.ndarray:
    """One image file -> uint8 (C, S, S) model pixels under `pre` (the encoder's preprocessing)."""
    return to_pixels(decode_image(read_bytes(Path(path)), str(path)), pre)


def read_bytes(path: Path) -> bytes:
    """Read a file, turning a missing file into a DataError that names it."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{path}: is a folder, not an image file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
