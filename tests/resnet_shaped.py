"""A ResNet-18-shaped network (BasicBlocks 2-2-2-2, global average pool) with random weights, built here so
nothing is downloaded; `export_onnx` writes it as an ONNX file as a user's backbone would come."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a (projected) shortcut, as in ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet18Shaped(nn.Module):
    """ResNet-18's layout (stem, 4 stages of 2 BasicBlocks, average pool) at `width` base channels: (N, 8*width).

    Random weights, initialised as torchvision's `zero_init_residual=True` does, so the features keep the
    stem's colour and texture statistics (a random deep stack otherwise collapses them).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, c = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.stages = nn.Sequential(*stages)
        for block in stages:  # torchvision's zero_init_residual: each block starts as its shortcut
            nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def export_onnx(path: Path, size: int = 96, seed: int = 0, width: int = 64) -> Path:
    """Build the network with seeded random weights and export it to ONNX (dynamic batch)."""
    torch.manual_seed(seed)
    model = ResNet18Shaped(width).eval()
    torch.onnx.export(model, (torch.rand(2, 3, size, size),), str(path), input_names=["image"],
                      output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                      external_data=False, verbose=False)
    return path


def export_torchscript(path: Path, seed: int = 0, width: int = 64) -> Path:
    """The same network as a TorchScript archive."""
    torch.manual_seed(seed)
    torch.jit.script(ResNet18Shaped(width).eval()).save(str(path))
    return path
