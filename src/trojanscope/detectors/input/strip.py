"""STRIP: Gao et al., "STRIP: A defence against trojan attacks on deep neural networks", ACSAC
2019 (cited by Jin et al. as [14]).

An input is superimposed on many clean images; the predictions on a clean input's blends vary
(high entropy) while a triggered input's blends keep going to the target class (low entropy),
because the trigger survives the superimposition.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..._params import Constraint, Interval
from ..._registry import register
from ...data import ImageData
from ...utils import generator
from ._base import InputDetector


@register("input_detector", "strip")
class Strip(InputDetector):
    """Score: minus the mean Shannon entropy (bits) of the predictions on ``n_blend`` blends of the
    input with clean images (Gao et al. eqs. 1-2): low entropy = suspicious.

    The blend is Gao et al.'s image addition ``clip(x + alpha * x_clean)``, capped to [0, 1].

    Args:
        n_blend: clean images superimposed per input (Gao et al.: N = 100); drawn once at fit
            time from the clean images, the same for every input.
        alpha: weight of the clean image in the blend (1 = Gao et al.'s addition).
        batch_size: inputs per batch (each expands to ``n_blend`` blends).
        fpr: target false-positive rate of ``predict`` on clean data.
        seed: which clean images are superimposed.
    """

    def __init__(self, *, n_blend: int = 100, alpha: float = 1.0, batch_size: int = 32,
                 fpr: float = 0.05, seed: int = 0) -> None:
        self.n_blend = n_blend
        self.alpha = alpha
        self.batch_size = batch_size
        self.fpr = fpr
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "n_blend": [Interval(int, 1, None)],
        "alpha": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
    }

    def _fit(self, model: nn.Module, clean: ImageData) -> None:
        # one fixed set of blend partners for every input: a score never depends on the batch
        pick = torch.randint(0, len(clean), (self.n_blend,), generator=generator(self.seed))
        self.backgrounds_ = clean.x[pick.to(clean.x.device)]

    def entropy(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Mean prediction entropy [N] (bits) over the blends of each input."""
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = x[i : i + self.batch_size]
                mix = (xb[:, None] + self.alpha * self.backgrounds_[None]).clamp_(0, 1).flatten(0, 1)
                logp = model(mix).log_softmax(1)
                h = -(logp.exp() * logp).sum(1) / torch.log(torch.tensor(2.0))
                out.append(h.view(len(xb), self.n_blend).mean(1))
        return torch.cat(out)

    def _score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return -self.entropy(model, x)
