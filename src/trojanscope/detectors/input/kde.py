"""Kernel density: Jin et al., "A unified framework for analyzing and detecting malicious examples
of DNN models", sec. 3.4, eq. 6 (after Feinman et al., "Detecting adversarial samples from
artifacts", 2017).

An input predicted as class t should lie where the clean images of class t lie in the last hidden
layer; malicious examples (adversarial or triggered) land in low-density regions.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..._params import Constraint, Interval
from ..._registry import register
from ...data import ImageData
from ...models.introspect import penultimate
from ._base import InputDetector
from ._features import sqdist


@register("input_detector", "kde")
class KernelDensity(InputDetector):
    """Gaussian kernel density in the last hidden layer against clean samples of the predicted
    class (Jin et al. eq. 6); score = -log KDE(x, t) (higher = more suspicious).

    KDE(x, t) = 1/|X_t| sum_{x_i in X_t} exp(-||phi(x_i) - phi(x)||^2 / sigma^2), computed in
    log space (logsumexp) so that a small bandwidth never underflows to log 0.

    Args:
        sigma: bandwidth (paper, Table 2: 1.2 for MNIST, 0.1 GTSRB, 0.5 PubFig).
        batch_size: inputs per forward pass.
        fpr: target false-positive rate of ``predict`` on clean data.
        seed: seed of the calibration split.
    """

    def __init__(self, *, sigma: float = 1.2, batch_size: int = 256, fpr: float = 0.05,
                 seed: int = 0) -> None:
        self.sigma = sigma
        self.batch_size = batch_size
        self.fpr = fpr
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "sigma": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
    }

    def _fit(self, model: nn.Module, clean: ImageData) -> None:
        self.features_ = penultimate(model, clean.x, self.batch_size)
        self.features_sq_ = (self.features_ * self.features_).sum(1)
        # X_t: the clean training samples of class t (eq. 6), i.e. by their true label
        self.labels_ = clean.y
        self.class_counts_ = torch.bincount(clean.y, minlength=self.num_classes_).clamp_min(1)

    def log_density(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log KDE(x, t) [N], predicted class t [N])."""
        f = penultimate(model, x, self.batch_size)
        with torch.no_grad():
            t = model(x).argmax(1) if len(x) <= self.batch_size else torch.cat(
                [model(x[i : i + self.batch_size]).argmax(1) for i in range(0, len(x), self.batch_size)])
        out = []
        for i in range(0, len(f), self.batch_size):
            d = sqdist(f[i : i + self.batch_size], self.features_, self.features_sq_) / self.sigma**2
            same = t[i : i + self.batch_size, None] == self.labels_[None]
            lse = torch.logsumexp((-d).masked_fill(~same, -math.inf), dim=1)
            out.append(lse - self.class_counts_[t[i : i + self.batch_size]].float().log())
        return torch.cat(out), t

    def _score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ld, _ = self.log_density(model, x)
        # a predicted class with no clean sample at all is maximally suspicious (but finite)
        return (-ld).nan_to_num(posinf=torch.finfo(torch.float32).max / 4)
