"""Local intrinsic dimensionality: Jin et al., "A unified framework for analyzing and detecting
malicious examples of DNN models", sec. 3.5, eq. 7 (after Ma et al., "Characterizing adversarial
subspaces using local intrinsic dimensionality", ICLR 2018).

The maximum-likelihood LID estimate of an input among the clean samples of its predicted class is
computed in several hidden layers; malicious examples lie in regions of higher local dimension.

How the per-layer LIDs are combined. Ma et al. (and Jin et al., who reuse the AE detector and
its threshold for BEs, sec. 3.5) train a logistic regression on LID vectors of clean + noisy
images (negatives) against adversarial examples of a known attack (positives). At fit time a
guard has only clean images, so two variants are offered:

* ``combine="zscore"`` (default, unsupervised): each layer's LID is standardised by the mean and
  standard deviation of the clean fit images' LIDs (leave-one-out) and the score is their mean,
  i.e. a logistic regression with equal weights encoding the paper's hypothesis "higher LID =
  malicious" in every layer. Needs no malicious examples and no gradients.
* ``combine="logistic"`` (semi-supervised, as in Ma et al.): the positives are adversarial
  examples the detector makes itself from its clean fit images with one FGSM step of size
  ``eps`` (Goodfellow et al. 2015), the negatives are the clean images and copies with uniform
  noise of the same L_inf size; the score is the logistic regression's log-odds. No knowledge
  of the backdoor is used.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..._params import Constraint, Interval, Options
from ..._registry import create, register
from ...data import ImageData
from ...models.wrap import require_gradients
from ...utils import generator
from ._base import InputDetector
from ._features import activation_layers, activations, sqdist


def lid_mle(d: torch.Tensor, k: int) -> torch.Tensor:
    """LID of eq. 7 from the distances ``d`` [N, k] to the k nearest neighbours (ascending)."""
    d = d.clamp_min(1e-12)
    s = torch.log(d / d[:, -1:]).mean(1)
    return -1.0 / s.clamp_max(-1e-12)


@register("input_detector", "lid")
class LocalIntrinsicDimensionality(InputDetector):
    """LID (Jin et al. eq. 7) in several layers, combined as described in the module docstring.

    Args:
        k: neighbours (paper, Table 2: 20 for MNIST, 30 GTSRB, 10 PubFig); capped by the number
            of clean references of a class minus one.
        layers: use the last ``layers`` Conv2d/Linear outputs (None = all).
        combine: ``"zscore"`` (unsupervised) or ``"logistic"`` (self-made FGSM examples).
        eps: FGSM step size for ``combine="logistic"``.
        batch_size: inputs per forward pass.
        fpr: target false-positive rate of ``predict`` on clean data.
        seed: seed of the noise of ``combine="logistic"`` and of the calibration split.
    """

    def __init__(self, *, k: int = 20, layers: int | None = None, combine: str = "zscore",
                 eps: float = 0.1, batch_size: int = 256, fpr: float = 0.05, seed: int = 0) -> None:
        self.k = k
        self.layers = layers
        self.combine = combine
        self.eps = eps
        self.batch_size = batch_size
        self.fpr = fpr
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "k": [Interval(int, 1, None)],
        "layers": [Interval(int, 1, None), None],
        "combine": [Options(("zscore", "logistic"))],
        "eps": [Interval(float, 0, 1, closed="right")],
        "batch_size": [Interval(int, 1, None)],
    }

    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(x[i : i + self.batch_size]).argmax(1)
                              for i in range(0, len(x), self.batch_size)])

    def lid_features(self, model: nn.Module, x: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
        """Per-layer LIDs [N, L] of ``x`` among the clean references of its predicted class."""
        t = self._predict(model, x)
        acts = activations(model, x, self.modules_, self.batch_size)
        cols = []
        for a, ref, ref_sq in zip(acts, self.refs_, self.refs_sq_, strict=True):
            col = []
            for i in range(0, len(a), self.batch_size):
                d = sqdist(a[i : i + self.batch_size], ref, ref_sq)
                tb = t[i : i + self.batch_size]
                d = d.masked_fill(tb[:, None] != self.labels_[None], float("inf"))
                if exclude_self:
                    rows = torch.arange(d.shape[0], device=d.device)
                    d[rows, rows + i] = float("inf")
                near = d.topk(self.k_, dim=1, largest=False).values.sqrt()
                col.append(lid_mle(near, self.k_))
            cols.append(torch.cat(col))
        lid = torch.stack(cols, 1)
        # a predicted class without clean references gives inf distances: very unusual
        return lid.nan_to_num(nan=1e4, posinf=1e4)

    def _fit(self, model: nn.Module, clean: ImageData) -> None:
        self.modules_ = activation_layers(model, self.layers)
        self.refs_ = activations(model, clean.x, self.modules_, self.batch_size)
        self.refs_sq_ = [(r * r).sum(1) for r in self.refs_]
        # X_t: clean references grouped by the model's label, as the online inputs are
        self.labels_ = self._predict(model, clean.x)
        counts = torch.bincount(self.labels_, minlength=self.num_classes_)
        self.k_ = int(max(2, min(self.k, int(counts[counts > 0].min()) - 1)))
        f_clean = self.lid_features(model, clean.x, exclude_self=True)
        self.mean_ = f_clean.mean(0)
        self.std_ = f_clean.std(0).clamp_min(1e-6)
        if self.combine == "logistic":
            self._fit_logistic(model, clean, f_clean)

    def _fit_logistic(self, model: nn.Module, clean: ImageData, f_clean: torch.Tensor) -> None:
        from sklearn.linear_model import LogisticRegression

        require_gradients(model, "lid with combine='logistic'")
        x = clean.x
        fgsm = create("evasion", "fgsm", eps=self.eps, batch_size=self.batch_size)
        x_adv = fgsm.run(model, x, self.labels_)
        g = generator(self.seed, "cpu")
        noise = (torch.rand(x.shape, generator=g) * 2 - 1).to(x) * self.eps
        x_noisy = (x + noise).clamp(0, 1)
        f_adv = self.lid_features(model, x_adv)
        f_noisy = self.lid_features(model, x_noisy)
        feats = torch.cat([f_clean, f_noisy, f_adv])
        z = ((feats - self.mean_) / self.std_).cpu().numpy()
        y = np.r_[np.zeros(len(f_clean) + len(f_noisy)), np.ones(len(f_adv))]
        self.logistic_ = LogisticRegression(max_iter=1000).fit(z, y)

    def _score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        z = (self.lid_features(model, x) - self.mean_) / self.std_
        if self.combine == "logistic":
            s = self.logistic_.decision_function(z.cpu().numpy())
            return torch.as_tensor(s, dtype=torch.float32)
        return z.mean(1)
