"""Data sets: real Omniglot and mini-ImageNet, and procedural glyphs, as in-memory `ImageSet`s."""

from typing import Any

from fedrecon.client.data.images import DataError, ImageSet
from fedrecon.client.data.registry import DEFAULT_SIZES, load_dataset


def __getattr__(name: str) -> Any:
    """`ImageDataset` is imported on first use (it needs torch; reading images does not)."""
    if name == "ImageDataset":
        from fedrecon.client.data.torch_dataset import ImageDataset

        return ImageDataset
    raise AttributeError(name)


__all__ = ["DEFAULT_SIZES", "DataError", "ImageDataset", "ImageSet", "load_dataset"]
