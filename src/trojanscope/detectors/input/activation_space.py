"""Activation space: Jin et al., "A unified framework for analyzing and detecting malicious
examples of DNN models", sec. 3.3, eqs. 4-5 (after Katzir & Elovici, IJCNN 2019).

Offline, a PCA + KNN classifier per layer learns to predict the label from that layer's clean
activations, and the prior probability p_s^i that the predicted label switches between layers
i-1 and i is estimated on clean data (eq. 4). Online, an input whose per-layer labels switch where
clean inputs rarely switch has a low log-likelihood LL_x (eq. 5): a malicious example looks like
its source class in the early layers and like the target class in the late ones.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..._params import Boolean, Constraint, Interval
from ..._registry import register
from ...data import ImageData
from ...models.introspect import last_linear
from ...utils import generator
from ._base import InputDetector
from ._features import activation_layers, activations, knn_vote, sqdist


def pca_basis(a: torch.Tensor, q: int, seed: int = 0, oversample: int = 10, n_iter: int = 2
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], components [D, q']) of the top ``q`` principal directions of ``a`` [M, D].

    Randomized SVD (Halko et al. 2011, Alg. 4.4 with ``n_iter`` power iterations) with a seeded
    test matrix: conv layers have ~10^4 dimensions, where an exact SVD costs seconds.
    """
    mean = a.mean(0)
    c = a - mean
    q = max(1, min(q, a.shape[0] - 1, a.shape[1]))
    r = min(q + oversample, *c.shape)
    if r >= min(c.shape) // 2:  # small problem: exact
        _, _, vh = torch.linalg.svd(c, full_matrices=False)
        return mean, vh[:q].T.contiguous()
    omega = torch.randn(c.shape[1], r, generator=generator(seed)).to(c)
    y = torch.linalg.qr(c @ omega).Q
    for _ in range(n_iter):
        y = torch.linalg.qr(c @ torch.linalg.qr(c.T @ y).Q).Q
    _, _, vh = torch.linalg.svd(y.T @ c, full_matrices=False)
    return mean, vh[:q].T.contiguous()


@register("input_detector", "activation_space")
class ActivationSpace(InputDetector):
    """Label-switching log-likelihood across layers (Jin et al. eqs. 4-5); score = -LL_x.

    Layers are the outputs of the model's Conv2d and Linear layers, the output layer included:
    its "classifier" is the model's own decision (argmax of the logits), not a KNN, so that an
    input whose hidden layers still look like the source class while the model outputs another
    label switches at the end (for an adversarial example just past the decision boundary, a KNN
    on the logits would still vote for the source class). The layers are preceded by the input image itself when
    ``include_input`` (layer 0, where the source class still dominates: "in the first few layers,
    AEs have similar behaviors as the normal samples since the original input dominates", sec.
    3.3).

    Args:
        n_components: PCA components per layer (paper: 100).
        k: neighbours of the KNN classifiers (paper: 5).
        layers: use only the last ``layers`` layers (None = all; the paper uses all for MNIST and
            GTSRB, the last 5 for VGG-16).
        include_input: add the input image as layer 0.
        batch_size: inputs per forward pass.
        fpr: target false-positive rate of ``predict`` on clean data.
        seed: seed of the calibration split.
    """

    def __init__(self, *, n_components: int = 100, k: int = 5, layers: int | None = None,
                 include_input: bool = False, batch_size: int = 256, fpr: float = 0.05, seed: int = 0) -> None:
        self.n_components = n_components
        self.k = k
        self.layers = layers
        self.include_input = include_input
        self.batch_size = batch_size
        self.fpr = fpr
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "n_components": [Interval(int, 1, None)],
        "k": [Interval(int, 1, None)],
        "layers": [Interval(int, 1, None), None],
        "include_input": [Boolean()],
        "batch_size": [Interval(int, 1, None)],
    }

    def _fit(self, model: nn.Module, clean: ImageData) -> None:
        self.modules_ = activation_layers(model, self.layers)
        # the output layer's label is the model's argmax (no PCA/KNN)
        self.output_is_last_ = self.modules_[-1] is last_linear(model)[1]
        acts = self._activations(model, clean.x)
        self.pca_ = [pca_basis(a, self.n_components, self.seed) for a in self._knn_part(acts)]
        self.refs_ = [(a - m) @ c for a, (m, c) in zip(self._knn_part(acts), self.pca_, strict=True)]
        self.refs_sq_ = [(r * r).sum(1) for r in self.refs_]
        self.labels_ = clean.y
        # eq. 4 on the clean references, each left out of its own neighbourhood
        y, _ = self.layer_labels(self.refs_, len(clean), exclude_self=True)
        if self.output_is_last_:
            y = torch.cat([y, acts[-1].argmax(1, keepdim=True)], 1)
        switched = (y[:, 1:] != y[:, :-1]).float().mean(0) if y.shape[1] > 1 else torch.zeros(0)
        n = len(clean)
        # add-one smoothing keeps log p_s finite when no clean reference ever switches
        self.p_switch_ = ((switched * n + 1) / (n + 2)).to(clean.x.device)

    def _activations(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        acts = activations(model, x, self.modules_, self.batch_size)
        return [x.flatten(1), *acts] if self.include_input else acts

    def _knn_part(self, acts: list[torch.Tensor]) -> list[torch.Tensor]:
        return acts[:-1] if self.output_is_last_ else acts

    def layer_labels(self, projected: list[torch.Tensor], n: int, exclude_self: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """KNN labels [n, L] from the PCA projections of every layer, and their vote shares."""
        dev = self.labels_.device
        cols, shares = [torch.empty(n, 0, dtype=torch.long, device=dev)], [torch.ones(n, 0, device=dev)]
        for p, ref, ref_sq in zip(projected, self.refs_, self.refs_sq_, strict=True):
            col, share = [], []
            for i in range(0, len(p), self.batch_size):
                d = sqdist(p[i : i + self.batch_size], ref, ref_sq)
                if exclude_self:
                    rows = torch.arange(d.shape[0], device=d.device)
                    d[rows, rows + i] = float("inf")
                lab, sh = knn_vote(d, self.labels_, self.k, self.num_classes_)
                col.append(lab)
                share.append(sh)
            cols.append(torch.cat(col)[:, None])
            shares.append(torch.cat(share)[:, None])
        return torch.cat(cols, 1), torch.cat(shares, 1)

    def log_likelihood(self, model: nn.Module, x: torch.Tensor, with_shares: bool = False):
        """LL_x of eq. 5 [N] (higher = behaves like clean inputs); with ``with_shares`` also the
        mean KNN vote share [N] of the chosen labels."""
        acts = self._activations(model, x)
        proj = [(a - m) @ c for a, (m, c) in zip(self._knn_part(acts), self.pca_, strict=True)]
        y, shares = self.layer_labels(proj, len(x))
        if self.output_is_last_:
            y = torch.cat([y, acts[-1].argmax(1, keepdim=True)], 1)
        if y.shape[1] < 2:
            ll = torch.zeros(len(x), device=x.device)
        else:
            sw = y[:, 1:] != y[:, :-1]
            p = self.p_switch_[None]
            ll = torch.where(sw, p.log(), (1 - p).log()).sum(1)
        if with_shares:
            share = shares.mean(1) if shares.shape[1] else torch.ones(len(x), device=x.device)
            return ll, share
        return ll

    def _score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ll, share = self.log_likelihood(model, x, with_shares=True)
        # LL_x takes few distinct values, so a threshold at 5% FPR falls inside a block of ties;
        # ties are broken by how split the neighbours' votes were (a term below 1e-3, small
        # against the gaps between distinct LL_x values, which are sums of log-probabilities)
        return -ll + 1e-3 * (1 - share)
