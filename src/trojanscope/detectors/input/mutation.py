"""Model mutation: Jin et al., "A unified framework for analyzing and detecting malicious examples
of DNN models", sec. 3.2 and 4.2 (after Wang et al., ICSE 2019, Gaussian Fuzzing).

Gaussian noise is added to the weights of the fully connected layers to make ``n_mutants``
mutated models; ``z`` of them change the label of an input. Adversarial examples sit near the
decision boundary and change label under a small mutation (Mutation I); backdoor examples are far
from it and keep their label under a large mutation that flips most clean inputs (Mutation II).
The counts go through the SPRT of eq. 3.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..._params import Constraint, Interval
from ..._registry import register
from ._base import InputDetector
from ._features import LabelChangeStages


def gaussian_fuzz(head: nn.Module, n: int, r_mu: float, r_delta: float, g: torch.Generator
                  ) -> dict[str, torch.Tensor]:
    """Batched parameters [n, ...] of ``n`` mutants of ``head`` (Jin et al. sec. 4.2, GF).

    Every ``nn.Linear`` weight W gets noise ~ N(r_mu * mean(W), (r_delta * max(W))^2); other
    parameters and buffers are shared (expanded, not copied).
    """
    out: dict[str, torch.Tensor] = {}
    linear_weights = {f"{name}.weight" if name else "weight"
                      for name, m in head.named_modules() if isinstance(m, nn.Linear)}
    tensors = dict(head.named_parameters())
    tensors.update(dict(head.named_buffers()))
    for name, p in tensors.items():
        p = p.detach()
        if name in linear_weights:
            noise = torch.randn((n, *p.shape), generator=g, device="cpu").to(p)
            out[name] = p + r_mu * p.mean() + r_delta * p.max() * noise
        else:
            out[name] = p.expand(n, *p.shape)
    return out


def mutant_predictions(head: nn.Module, params: dict[str, torch.Tensor], h: torch.Tensor,
                       batch_size: int = 256) -> torch.Tensor:
    """Labels [n_mutants, N] of every mutant on head inputs ``h`` [N, D], in one vmapped call
    per batch of inputs (never a Python loop over mutants)."""

    def one(p: dict[str, torch.Tensor], hb: torch.Tensor) -> torch.Tensor:
        return functional_call(head, p, (hb,)).argmax(-1)

    run = vmap(one, in_dims=(0, None))
    with torch.no_grad():
        return torch.cat([run(params, h[i : i + batch_size]) for i in range(0, len(h), batch_size)], 1)


@register("input_detector", "mutation")
class ModelMutation(LabelChangeStages, InputDetector):
    """Model mutation detector (Jin et al. sec. 3.2, eq. 3; parameters of Table 2, MNIST).

    Score: the SPRT log-ratio margin past the decision bound of the stage (``>= 0`` is the SPRT
    verdict "malicious"; see :func:`._features.label_change_score`); a monotone function of the
    label-change count ``z``.

    Args:
        stage: ``"backdoor"`` (Mutation II: few label changes are suspicious), ``"adversarial"``
            (Mutation I: many label changes are suspicious) or ``"both"`` (the two-stage
            procedure of Fig. 3, max of the two margins).
        n_mutants: number n of mutated models (paper: 100).
        r_mu, r_delta: mutation factors of Mutation II (paper, MNIST: 1.0, 0.65).
        r_mu_ae, r_delta_ae: mutation factors of Mutation I (paper, MNIST: 1.0, 0.3).
        varsigma_h: label-change-rate threshold of the SPRT; None = set from the clean fit images
            (Mutation II: half their mean change rate; Mutation I: three times it, in [0.05, 0.5]).
        delta: indifference half-width of the SPRT (p1 = varsigma_h - delta, p0 = varsigma_h +
            delta; capped at varsigma_h / 2).
        alpha, beta: error bounds of the SPRT.
        batch_size: inputs per vmapped call.
        fpr: target false-positive rate of ``predict`` on clean data.
        seed: seed of the mutants.
    """

    def __init__(self, *, stage: str = "backdoor", n_mutants: int = 100, r_mu: float = 1.0,
                 r_delta: float = 0.65, r_mu_ae: float = 1.0, r_delta_ae: float = 0.3,
                 varsigma_h: float | None = None, delta: float = 0.05, alpha: float = 0.05,
                 beta: float = 0.05, batch_size: int = 256, fpr: float = 0.05, seed: int = 0) -> None:
        self.stage = stage
        self.n_mutants = n_mutants
        self.r_mu = r_mu
        self.r_delta = r_delta
        self.r_mu_ae = r_mu_ae
        self.r_delta_ae = r_delta_ae
        self.varsigma_h = varsigma_h
        self.delta = delta
        self.alpha = alpha
        self.beta = beta
        self.batch_size = batch_size
        self.fpr = fpr
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "n_mutants": [Interval(int, 1, None)],
        "r_mu": [Interval(float, None, None)],
        "r_delta": [Interval(float, 0, None)],
        "r_mu_ae": [Interval(float, None, None)],
        "r_delta_ae": [Interval(float, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }

    def _n_copies(self) -> int:
        return self.n_mutants

    def _draw(self, stage: str, g: torch.Generator) -> dict[str, torch.Tensor]:
        r_mu, r_delta = (self.r_mu, self.r_delta) if stage == "backdoor" else (self.r_mu_ae, self.r_delta_ae)
        return gaussian_fuzz(self.head_, self.n_mutants, r_mu, r_delta, g)

    def _copy_predictions(self, stage: str, h: torch.Tensor) -> torch.Tensor:
        params = {k: v.to(h.device) for k, v in self.copies_[stage].items()}
        return mutant_predictions(self.head_, params, h, self.batch_size)
