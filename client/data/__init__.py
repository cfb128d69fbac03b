"""Data sets: real Omniglot and mini-ImageNet, and procedural glyphs, as in-memory `ImageSet`s."""

from fedrecon.client.data.images import DataError, ImageDataset, ImageSet
from fedrecon.client.data.registry import DEFAULT_SIZES, load_dataset

__all__ = ["DEFAULT_SIZES", "DataError", "ImageDataset", "ImageSet", "load_dataset"]
