"""Feature squeezing: Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
Neural Networks", NDSS 2018, as discussed by Jin et al., "A unified framework for analyzing and
detecting malicious examples of DNN models", sec. 6 (Remark 7).

The prediction on an input is compared with the predictions on squeezed copies (colour bit-depth
reduction, median smoothing): adversarial perturbations are fragile and get squeezed away, so the
prediction moves. Jin et al. find that it fails for backdoor examples: a trigger survives the
squeezers, so their predictions barely move.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..._params import Constraint, Interval
from ..._registry import register
from ...data import ImageData
from ...errors import InputError
from ._base import InputDetector


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantise [0, 1] images to ``bits`` bits per channel (Xu et al. sec. 4.1)."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median over ``size`` x ``size`` windows per channel, placed like
    scipy.ndimage.median_filter (the window of an even size reaches one pixel further up/left;
    the upper of the two middle values is taken) and edge-padded (the same as scipy's default
    "reflect" for windows up to 3x3)."""
    if size == 1:
        return x
    lo, hi = size // 2, size - 1 - size // 2
    pad = F.pad(x, (lo, hi, lo, hi), mode="replicate")
    win = pad.unfold(2, size, 1).unfold(3, size, 1)  # N, C, H, W, s, s
    return win.flatten(-2).sort(-1).values[..., (size * size) // 2]


@register("input_detector", "squeeze")
class FeatureSqueezing(InputDetector):
    """Score: max over squeezers of the L1 distance between softmax outputs on the input and on
    its squeezed copy (Xu et al. sec. 3). Jin et al. (sec. 6) expect AUC near 0.5 for BEs.

    Args:
        bit_depth: bits kept by the bit-depth squeezer (Xu et al.: 1 for MNIST, 5 for CIFAR-10);
            None disables it.
        median_size: window of the median filter (Xu et al.: 2 for MNIST and CIFAR-10); None
            disables it.
        batch_size: inputs per forward pass.
        fpr: target false-positive rate of ``predict`` on clean data.
        seed: seed of the calibration split.
    """

    def __init__(self, *, bit_depth: int | None = 1, median_size: int | None = 2,
                 batch_size: int = 256, fpr: float = 0.05, seed: int = 0) -> None:
        self.bit_depth = bit_depth
        self.median_size = median_size
        self.batch_size = batch_size
        self.fpr = fpr
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "bit_depth": [Interval(int, 1, 8), None],
        "median_size": [Interval(int, 1, None), None],  # at most the image side: checked in fit
        "batch_size": [Interval(int, 1, None)],
    }

    def _fit(self, model: nn.Module, clean: ImageData) -> None:
        if self.bit_depth is None and self.median_size is None:
            raise InputError(f"{self.name}: feature squeezing needs at least one squeezer "
                             "(bit_depth or median_size)")
        side = min(clean.x.shape[-2:])
        if self.median_size is not None and self.median_size > side:
            raise InputError(f"{self.name}: median_size must be at most the image side ({side}), "
                             f"got {self.median_size}")

    def _score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = x[i : i + self.batch_size]
                squeezed = []
                if self.bit_depth is not None:
                    squeezed.append(reduce_bit_depth(xb, int(self.bit_depth)))
                if self.median_size is not None:
                    squeezed.append(median_filter(xb, int(self.median_size)))
                p = model(torch.cat([xb, *squeezed])).softmax(1).view(1 + len(squeezed), len(xb), -1)
                out.append((p[1:] - p[:1]).abs().sum(-1).amax(0))
        return torch.cat(out)
