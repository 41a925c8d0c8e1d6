"""Wide residual networks for 32x32 images (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3x3 stem of 16 channels, three groups of ``(d - 4) / 6`` pre-activation basic blocks
(BN-ReLU-conv3x3, twice; Fig. 1b) of ``16k``, ``32k``, ``64k`` channels, the last two groups
starting with stride 2, then BN-ReLU and global average pooling (Table 1). ``wrn16_1`` is the
small network of the Neural Cleanse / Trojan-detection benchmarks' CIFAR-10 model zoos (~0.18M
parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from ..._registry import register
from ._base import ConvNet, _check


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or 1x1 projection) shortcut (Fig. 1b)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        # the projection sees the pre-activated input, as in the authors' code
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.relu(self.bn2(self.conv1(o))))
        return o + short


def _wrn(depth: int, width: int, num_classes: int, in_shape: tuple[int, int, int]) -> ConvNet:
    c, _, _ = _check(num_classes, in_shape, min_side=8)
    if (depth - 4) % 6:
        raise ValueError("WRN depth must be 6n + 4")
    n = (depth - 4) // 6
    layers: list[nn.Module] = [nn.Conv2d(c, 16, 3, 1, 1, bias=False)]
    cin = 16
    for i, w in enumerate((16 * width, 32 * width, 64 * width)):
        for j in range(n):
            layers.append(_PreActBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
            cin = w
    layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    return ConvNet(nn.Sequential(*layers), [], num_classes, (c, *in_shape[1:]))


@register("arch", "wrn16_1")
def wrn16_1(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32)) -> ConvNet:
    """WRN-16-1: depth 16 (two blocks per group), width 1 (16-32-64 channels)."""
    return _wrn(16, 1, num_classes, in_shape)
