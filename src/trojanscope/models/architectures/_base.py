"""What every architecture shares: input checks and the ``features`` -> ``classifier`` shape.

Convention (relied on by introspection, pruning and feature-space detectors): a model has a
``features`` module (convolutional part) and a ``classifier`` ``nn.Sequential`` whose last layer
is the output ``nn.Linear``; the input of that last layer is the penultimate representation.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import InputError


def _check(num_classes: int, in_shape: tuple[int, ...], min_side: int = 4) -> tuple[int, int, int]:
    if num_classes < 2:
        raise InputError(f"num_classes must be >= 2, got {num_classes}")
    if len(in_shape) != 3:
        raise InputError(f"in_shape must be (C, H, W), got {tuple(in_shape)}")
    c, h, w = (int(v) for v in in_shape)
    if min(h, w) < min_side:
        raise InputError(f"input {h}x{w} is too small for this architecture (min {min_side})")
    return c, h, w


def _flat_size(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *in_shape)).flatten(1).shape[1])


class ConvNet(nn.Module):
    """``features`` -> flatten -> ``classifier``; the shape every small architecture shares."""

    def __init__(self, features: nn.Module, hidden: list[int], num_classes: int,
                 in_shape: tuple[int, int, int], dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_shape = tuple(in_shape)
        self.features = features
        layers: list[nn.Module] = []
        d = _flat_size(features, in_shape)
        for hdim in hidden:
            layers += [nn.Linear(d, hdim), nn.ReLU(inplace=False)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = hdim
        layers.append(nn.Linear(d, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
