"""A small DenseNet-BC (Huang et al. 2017, "Densely connected convolutional networks", sec. 3).

DenseNet-BC with depth 40 and growth rate k = 12 (the CIFAR configuration of Table 2):
three dense blocks of 6 bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k, eq. 2),
transition layers halving the channels (compression 0.5) and the resolution. ``features`` ends
with BN-ReLU and a global average pool; ``classifier`` = ``Sequential(Linear)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..._registry import register
from ._base import ConvNet, _check


class Bottleneck(nn.Module):
    """H_l of eq. (2): BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


@register("arch", "densenet_small")
def densenet_small(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32),
                   growth: int = 12, layers_per_block: int = 6) -> ConvNet:
    """DenseNet-BC-40 (k = 12): 3 dense blocks x 6 bottleneck layers, compression 0.5."""
    c, h, w = _check(num_classes, in_shape, min_side=8)
    ch = 2 * growth
    layers: list[nn.Module] = [nn.Conv2d(c, ch, 3, padding=1, bias=False)]
    for b in range(3):
        for _ in range(layers_per_block):
            layers.append(Bottleneck(ch, growth))
            ch += growth
        if b < 2:
            layers.append(_transition(ch, ch // 2))
            ch //= 2
    layers += [nn.BatchNorm2d(ch), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    return ConvNet(nn.Sequential(*layers), [], num_classes, (c, h, w))
