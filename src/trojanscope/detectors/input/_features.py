"""Shared pieces of the input detectors: layer activations, the fully connected head, nearest
neighbours, and the label-change statistics of the model-mutation family (Jin et al. sec. 3.2)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..._params import Constraint, Interval, Options
from ...errors import InputError
from ...models.introspect import last_linear, named_layers, record
from ...utils import generator


def activation_layers(model: nn.Module, last: int | None = None) -> list[nn.Module]:
    """The Conv2d/Linear layers whose outputs form the activation spaces, in forward order.

    Args:
        model: the classifier.
        last: keep only the last ``last`` layers (None = all; Jin et al. sec. 4.2 use all layers
            for MNIST/GTSRB and the last 5 for VGG-16).
    """
    layers = [m for _, m in named_layers(model)]
    if not layers:
        raise InputError("this model has no Conv2d/Linear layers that trojanscope can see "
                         "(a torch.export or ONNX model hides them); this detector needs them")
    if last is not None:
        if last < 1:
            raise InputError(f"layers must be >= 1 (or None for all), got {last}")
        layers = layers[-last:]
    return layers


def activations(model: nn.Module, x: torch.Tensor, modules: list[nn.Module],
                batch_size: int = 256) -> list[torch.Tensor]:
    """Flattened outputs [N, D_i] of ``modules`` on ``x`` (no gradients, batched)."""
    return record(model, x, modules, batch_size=batch_size)


def classifier_head(model: nn.Module) -> nn.Sequential:
    """The fully connected head: the ``nn.Sequential`` (preferably named ``classifier``) that ends
    in the output Linear (the architecture convention of :mod:`trojanscope.models.architectures`).
    """
    _, out_layer = last_linear(model)
    cands = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Sequential) and len(m) and m[-1] is out_layer]
    if not cands:
        raise InputError("this detector mutates the fully connected layers and needs them in an "
                         "nn.Sequential `classifier` ending in the output Linear")
    named = [m for n, m in cands if n.split(".")[-1] == "classifier"]
    return named[0] if named else cands[0][1]


def head_input(model: nn.Module, head: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """[N, D] input of the head: the conv features, computed once (they do not change when only
    fully connected weights are mutated or dropped out)."""
    return record(model, x, [head], inputs=True, batch_size=batch_size)[0]


def check_head(model: nn.Module, head: nn.Module, x: torch.Tensor) -> None:
    """The head must reproduce the model's predictions from its recorded input."""
    with torch.no_grad():
        ok = head(head_input(model, head, x)).argmax(1).eq(model(x).argmax(1)).float().mean()
    if float(ok) < 0.99:
        raise InputError("the model's `classifier` head does not reproduce its predictions; this "
                         "detector needs a model of the form classifier(flatten(features(x)))")


def sqdist(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances [N, M] between rows of ``a`` [N, D] and ``b`` [M, D].

    ``b_sq`` [M]: the precomputed squared norms of ``b`` (references scored many times: saves
    a pass over an [M, D] array per call, which dominates single-input latency).
    """
    if b_sq is None:
        b_sq = (b * b).sum(1)
    d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + b_sq[None]
    return d.clamp_min_(0.0)


def knn_vote(d: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Majority label [N] of the ``k`` nearest references (distances ``d`` [N, M]) and its vote
    share [N] in (0, 1]; ties go to the class whose members are nearer (votes weighted 1 + a tiny
    rank bonus)."""
    k = min(k, d.shape[1])
    idx = d.topk(k, dim=1, largest=False).indices  # [N, k], nearest first
    w = 1.0 + 1e-3 * torch.linspace(1, 0, k, device=d.device)
    votes = torch.zeros(d.shape[0], num_classes, device=d.device, dtype=w.dtype)
    votes.scatter_add_(1, labels[idx], w.expand(d.shape[0], k).contiguous())
    top = votes.max(1)
    return top.indices, top.values / w.sum()


def sprt_log_ratio(z: torch.Tensor, n: int, p1: float, p0: float) -> torch.Tensor:
    """log of the SPRT ratio of Jin et al. eq. 3: p1^z (1-p1)^(n-z) / (p0^z (1-p0)^(n-z)).

    Args:
        z: label-change counts [N] out of ``n`` mutants.
        p1: varsigma_h - delta; p0: varsigma_h + delta (clamped into (0, 1)).
    """
    p1 = min(max(p1, 1e-4), 1 - 1e-4)
    p0 = min(max(p0, 1e-4), 1 - 1e-4)
    z = z.float()
    return z * math.log(p1 / p0) + (n - z) * math.log((1 - p1) / (1 - p0))


def label_change_score(z: torch.Tensor, n: int, stage: str, varsigma_h: float, delta: float,
                       alpha: float, beta: float) -> torch.Tensor:
    """Suspicion score from label-change counts through the SPRT (Jin et al. sec. 3.2, eq. 3).

    The score is the margin of the SPRT log ratio past the decision bound of the stage, so that
    ``score >= 0`` is exactly the SPRT verdict "malicious" and higher means more suspicious:

    * ``"adversarial"`` (Mutation I): H0 "x is an AE" is accepted when SPRT <= beta/(1-alpha);
      score = log(beta/(1-alpha)) - log SPRT (many label changes -> high).
    * ``"backdoor"`` (Mutation II): the hypotheses are reversed; "x is a BE" is accepted when
      SPRT >= (1-beta)/alpha; score = log SPRT - log((1-beta)/alpha) (few changes -> high).

    The two-stage procedure of Fig. 3 (stage ``"both"`` of the detectors) takes the max of the two
    margins, each computed from the counts of its own mutation.
    """
    if stage == "adversarial":
        return math.log(beta / (1 - alpha)) - sprt_log_ratio(z, n, varsigma_h - delta, varsigma_h + delta)
    if stage == "backdoor":
        return sprt_log_ratio(z, n, varsigma_h - delta, varsigma_h + delta) - math.log((1 - beta) / alpha)
    raise InputError(f"unknown stage {stage!r}; use adversarial, backdoor or both")


def default_varsigma(stage: str, clean_rate: float) -> float:
    """SPRT threshold varsigma_h from the mean label-change rate of clean images: half of it for
    the backdoor stage (BEs change less than clean inputs), three times it (within [0.05, 0.5])
    for the adversarial stage (AEs change more). Only the SPRT verdict depends on it; the score
    order (hence the ROC) does not."""
    if stage == "backdoor":
        return max(clean_rate / 2, 1e-3)
    return min(max(3 * clean_rate, 0.05), 0.5)


class LabelChangeStages:
    """Mixin of the mutation family (``mutation``, ``uncertainty``): perturbed copies of the
    classifier head vote, the label-change counts go through the SPRT of Jin et al. eq. 3.

    The mixin owns fit, counting and scoring; a detector says only how it perturbs the head:
    ``_n_copies()``, ``_draw(stage, g)`` (the perturbations of one stage, drawn once at fit
    time) and ``_copy_predictions(stage, h)`` (labels [n, N] of the perturbed heads on head
    inputs ``h``). The detector has ``stage``, ``varsigma_h``, ``delta``, ``alpha``, ``beta``,
    ``batch_size`` and ``seed`` parameters; the constraints of the first five are declared here.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "stage": [Options(("backdoor", "adversarial", "both"))],
        "varsigma_h": [Interval(float, 0, 1, closed="neither"), None],
        "delta": [Interval(float, 0, 1, closed="neither")],
        "alpha": [Interval(float, 0, 1, closed="neither")],
        "beta": [Interval(float, 0, 1, closed="neither")],
    }

    def _fit(self, model, clean) -> None:
        self.head_ = classifier_head(model)
        check_head(model, self.head_, clean.x[:64])
        g = generator(self.seed)
        self.copies_ = {st: self._draw(st, g) for st in self._stages()}
        self._set_varsigma(self.change_counts(model, clean.x), self._n_copies())

    def change_counts(self, model, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Label-change counts z [N] per stage: perturbed heads whose label differs from the model's."""
        h = head_input(model, self.head_, x, self.batch_size)
        with torch.no_grad():
            y0 = self.head_(h).argmax(1)
        return {st: self._copy_predictions(st, h).ne(y0[None]).sum(0) for st in self.copies_}

    def _score(self, model, x: torch.Tensor) -> torch.Tensor:
        return self._sprt_score(self.change_counts(model, x), self._n_copies())

    def _stages(self) -> list[str]:
        return ["adversarial", "backdoor"] if self.stage == "both" else [self.stage]

    def _set_varsigma(self, z: dict[str, torch.Tensor], n: int) -> None:
        """varsigma_h per stage: the parameter, or from the clean counts ``z`` (default_varsigma)."""
        self.varsigma_ = {st: (default_varsigma(st, float(z[st].float().mean()) / n)
                               if self.varsigma_h is None else float(self.varsigma_h))
                          for st in self._stages()}

    def _sprt_score(self, z: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        margins = [label_change_score(z[st], n, st, self.varsigma_[st], min(self.delta, self.varsigma_[st] / 2),
                                      self.alpha, self.beta) for st in self._stages()]
        return torch.stack(margins).amax(0)

