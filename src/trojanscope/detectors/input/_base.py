"""The base class of inference-time input detectors; it owns the common steps."""

from __future__ import annotations

import time
from typing import ClassVar, final

import torch
from torch import nn

from ..._params import Configurable, Constraint, Interval
from ..._runtime import frozen, prepared
from ..._validate import check_images
from ...data import ImageData
from ...errors import InputError
from ...metrics import threshold_at_fpr
from ...types import InputScores
from ...utils import model_device


class InputDetector(Configurable):
    """``Detector(**params).fit(model, clean)``, then ``.score(x)`` (higher = more suspicious)
    and ``.predict(x)`` (flags at a threshold giving false-positive rate ``fpr`` on clean data).

    Subclasses implement :meth:`_fit` and :meth:`_score`. The base class validates, freezes the
    model while it works, holds out ``calibration_fraction`` of the clean images (stratified)
    to choose the threshold, and records timings. Every subclass ``__init__`` takes at least
    ``fpr`` and ``seed`` keyword-only and stores them unchanged; ``fit`` checks every parameter
    against ``parameter_constraints`` before any work.
    """

    fpr: float = 0.05
    seed: int = 0
    calibration_fraction: float = 0.3
    #: the parameters every input detector has; subclasses add their own (see Configurable)
    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "fpr": [Interval(float, 0, 1, closed="neither")],
        "seed": [Interval(int, 0, None)],
    }


    @final
    def fit(self, model: nn.Module, clean: ImageData | tuple[torch.Tensor, torch.Tensor]) -> InputDetector:
        """Learn clean statistics from ``clean`` and set the threshold on a held-out part of it."""
        self.validate_params()
        prep = prepared(model, clean, method=self.name)
        data = prep.data
        with frozen(model):
            self.model_ = prep.model
            self.num_classes_ = prep.num_classes
            self.in_shape_ = tuple(data.x.shape[1:])
            fit_part, calib = data.split(1 - self.calibration_fraction, seed=self.seed)
            if len(calib) < 5:
                raise InputError("too few clean images to calibrate a threshold (need >= 20)")
            t0 = time.perf_counter()
            self._fit(self.model_, fit_part)
            self.calibration_scores_ = self._score(self.model_, calib.x).detach().cpu()
            self.fit_seconds_ = time.perf_counter() - t0
        self.threshold_ = threshold_at_fpr(self.calibration_scores_, self.fpr)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise InputError(f"{self.name}: call fit(model, clean) before score/predict")

    @final
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Suspicion scores [N] (higher = more likely triggered/adversarial)."""
        self._check_fitted()
        check_images(x, in_shape=self.in_shape_)
        x = x.to(model_device(self.model_))
        with frozen(self.model_):
            s = self._score(self.model_, x)
        return s.detach().float().cpu()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Bool flags [N]: score above the calibrated threshold."""
        return self.score(x) > self.threshold_

    def detect(self, x: torch.Tensor) -> InputScores:
        """Scores, flags and model predictions in one typed result."""
        t0 = time.perf_counter()
        s = self.score(x)
        with torch.no_grad(), frozen(self.model_):
            pred = self.model_(x.to(model_device(self.model_))).argmax(1).cpu()
        return InputScores(self.name, s, s > self.threshold_, self.threshold_, pred,
                           time.perf_counter() - t0, self.get_params())

    def _fit(self, model: nn.Module, clean: ImageData) -> None:  # pragma: no cover
        raise NotImplementedError

    def _score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
