"""Data sets: real Omniglot and mini-ImageNet, and procedural glyphs, as in-memory `ImageSet`s."""

from fedrecon.client.data.images import DataError, ImageDataset, ImageSet

__all__ = ["DataError", "ImageDataset", "ImageSet"]
