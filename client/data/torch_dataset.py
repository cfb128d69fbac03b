"""A torch `Dataset` view of an `ImageSet` (kept apart so reading images never imports torch)."""

from __future__ import annotations

import torch

from fedrecon.client.data.images import ImageSet, to_float


class ImageDataset(torch.utils.data.Dataset):
    """Map-style torch Dataset over an ImageSet: item i is (float32 tensor (C, H, W), label)."""

    def __init__(self, images: ImageSet) -> None:
        self.set = images

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(to_float(self.set.pixels[i])), int(self.set.labels[i])
