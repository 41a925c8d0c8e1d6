"""MobileNetV2 for 32x32 images (Sandler et al. 2018, "MobileNetV2", Table 2).

CIFAR variant: the stem and the second stage use stride 1 instead of 2 (so a 32x32 input ends at
4x4 instead of 1x1); otherwise Table 2's inverted-residual stages, width multiplier 1.
``features`` ends with the 1x1 conv to 1280 channels and a global average pool; ``classifier`` =
``Sequential(Linear)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..._registry import register
from ._base import ConvNet, _check

# (expansion t, output channels c, repeats n, stride s) of Table 2; s of the 24-channel stage is 1
# here (2 in the ImageNet network).
_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
        (6, 320, 1, 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6()] if act else layers


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; residual when shapes agree (Fig. 4)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn(cin, hidden, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, cout, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


@register("arch", "mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_shape: tuple[int, int, int] = (3, 32, 32)) -> ConvNet:
    """MobileNetV2 (CIFAR variant, width 1.0): 32-channel stem, 17 inverted residual blocks, 1280."""
    c, h, w = _check(num_classes, in_shape, min_side=8)
    layers: list[nn.Module] = _conv_bn(c, 32, 3, 1)
    cin = 32
    for t, cout, n, s in _CFG:
        for j in range(n):
            layers.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
            cin = cout
    layers += _conv_bn(cin, 1280, 1) + [nn.AdaptiveAvgPool2d(1)]
    return ConvNet(nn.Sequential(*layers), [], num_classes, (c, h, w))
