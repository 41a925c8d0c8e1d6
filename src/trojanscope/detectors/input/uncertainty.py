"""Bayesian uncertainty (MC dropout): Jin et al., "A unified framework for analyzing and detecting
malicious examples of DNN models", sec. 6 and Table 5 (after Feinman et al., "Detecting
adversarial samples from artifacts", 2017).

Jin et al. run the model-mutation workflow (sec. 3.2) with dropout on every fully connected layer
in place of Gaussian fuzzing: with a small rate adversarial examples change label; with a large
rate (Table 5: 0.75 for MNIST) clean inputs change label while backdoor examples keep it. They
report that it fails on the simple MNIST model (Remark 6) and works on large ones.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..._params import Constraint, Interval
from ..._registry import register
from ._base import InputDetector
from ._features import LabelChangeStages


def dropout_masks(head: nn.Module, n: int, rate: float, g: torch.Generator) -> list[torch.Tensor]:
    """``n`` fixed dropout masks per ``nn.Linear`` of ``head``: [n, in_features] each, Bernoulli
    (1 - rate) scaled by 1/(1 - rate). Drawn once at fit time, like the mutants of ``mutation``,
    so that an input's score never depends on the other inputs of its batch."""
    out = []
    for m in head.modules():
        if isinstance(m, nn.Linear):
            keep = torch.rand(n, m.in_features, generator=g) >= rate
            out.append(keep.to(m.weight) / (1.0 - rate))
    return out


def dropout_predictions(head: nn.Module, h: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """Labels [n, N] of the ``n`` MC-dropout passes of ``head`` on its inputs ``h`` [N, D]; every
    ``nn.Linear`` sees its input through its masks. All passes run as one batch of n*N rows."""
    n = masks[0].shape[0]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]

    def hook(mask: torch.Tensor):
        def drop(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            x = inp[0]
            return ((x.view(n, -1, x.shape[-1]) * mask[:, None]).view_as(x),)
        return drop

    hooks = [m.register_forward_pre_hook(hook(mk)) for m, mk in zip(linears, masks, strict=True)]
    try:
        with torch.no_grad():
            out = head(h.repeat(n, 1)).argmax(-1)
    finally:
        for hk in hooks:
            hk.remove()
    return out.view(n, len(h))


@register("input_detector", "uncertainty")
class BayesianUncertainty(LabelChangeStages, InputDetector):
    """MC-dropout label changes through the SPRT of Jin et al. eq. 3 (score as in ``mutation``).

    Args:
        stage: ``"backdoor"`` (few label changes are suspicious), ``"adversarial"`` (many are)
            or ``"both"`` (max of the two SPRT margins).
        n_samples: dropout passes per input (the n of eq. 3).
        rate: dropout rate of the backdoor stage (paper, Table 5: MNIST 0.75, GTSRB 0.8,
            PubFig 0.5).
        rate_ae: dropout rate of the adversarial stage (not given by Jin et al.; 0.5 as in the
            MNIST model of Feinman et al.).
        varsigma_h, delta, alpha, beta: the SPRT (see ``mutation``); varsigma_h None = set from
            the clean fit images.
        batch_size: inputs per batch (each expands to ``n_samples`` rows).
        fpr: target false-positive rate of ``predict`` on clean data.
        seed: seed of the dropout masks.
    """

    def __init__(self, *, stage: str = "backdoor", n_samples: int = 100, rate: float = 0.75,
                 rate_ae: float = 0.5, varsigma_h: float | None = None, delta: float = 0.05,
                 alpha: float = 0.05, beta: float = 0.05, batch_size: int = 64, fpr: float = 0.05,
                 seed: int = 0) -> None:
        self.stage = stage
        self.n_samples = n_samples
        self.rate = rate
        self.rate_ae = rate_ae
        self.varsigma_h = varsigma_h
        self.delta = delta
        self.alpha = alpha
        self.beta = beta
        self.batch_size = batch_size
        self.fpr = fpr
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "n_samples": [Interval(int, 1, None)],
        "rate": [Interval(float, 0, 1, closed="neither")],
        "rate_ae": [Interval(float, 0, 1, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
    }

    def _n_copies(self) -> int:
        return self.n_samples

    def _draw(self, stage: str, g: torch.Generator) -> list[torch.Tensor]:
        return dropout_masks(self.head_, self.n_samples, self.rate if stage == "backdoor" else self.rate_ae, g)

    def _copy_predictions(self, stage: str, h: torch.Tensor) -> torch.Tensor:
        masks = [m.to(h.device) for m in self.copies_[stage]]
        return torch.cat([dropout_predictions(self.head_, h[i : i + self.batch_size], masks)
                          for i in range(0, len(h), self.batch_size)], 1)
