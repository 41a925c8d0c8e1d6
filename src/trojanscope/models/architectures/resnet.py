"""ResNet-18/34 for 32x32 images (He et al. 2016, "Deep residual learning", Table 1).

The CIFAR variant used by L-RED (Xiang et al. 2020, sec. 5.1: ResNet-18 on CIFAR-10; appendix
A.7: ResNet-34 on CIFAR-100): a 3x3 stride-1 stem and no max-pool, so a 32x32 input reaches the
last stage at 4x4. ``features`` = stem + four stages + global average pool; ``classifier`` =
``Sequential(Linear)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..._registry import register
from ._base import ConvNet, _check


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut, He et al. Fig. 2."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _resnet(blocks: tuple[int, int, int, int], num_classes: int, in_shape: tuple[int, int, int]) -> ConvNet:
    c, h, w = _check(num_classes, in_shape, min_side=8)
    layers: list[nn.Module] = [nn.Conv2d(c, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
        for j in range(n):
            layers.append(BasicBlock(cin, width, 2 if (i > 0 and j == 0) else 1))
            cin = width
    layers.append(nn.AdaptiveAvgPool2d(1))
    return ConvNet(nn.Sequential(*layers), [], num_classes, (c, h, w))


@register("arch", "resnet18")
def resnet18(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32)) -> ConvNet:
    """ResNet-18 (CIFAR variant): [2, 2, 2, 2] basic blocks of 64-128-256-512 channels."""
    return _resnet((2, 2, 2, 2), num_classes, in_shape)


@register("arch", "resnet34")
def resnet34(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32)) -> ConvNet:
    """ResNet-34 (CIFAR variant): [3, 4, 6, 3] basic blocks of 64-128-256-512 channels."""
    return _resnet((3, 4, 6, 3), num_classes, in_shape)
