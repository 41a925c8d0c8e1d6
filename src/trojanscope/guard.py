"""A guard in front of a model: several input detectors, each calibrated on clean images, flag
inputs that look adversarial or triggered (Jin et al., "A unified framework for analyzing and
detecting malicious examples of DNN models", the framework of sec. 3.1).

    guard = Guard(model, ["kde", "mutation"], fpr=0.05).fit(clean)
    res = guard.predict(x)      # labels, per-detector scores and flags, any-flag verdict
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._registry import get
from ._runtime import ProgressFn, frozen
from .data import ImageData
from .detectors.input import InputDetector
from .errors import InputError
from .types import _as_dict
from .utils import model_device

DetectorSpec = str | InputDetector | Sequence[str | InputDetector] | Mapping[str, Mapping[str, Any]]


@dataclass
class GuardResult:
    """What the guard says about a batch of N inputs.

    Attributes:
        labels: the model's predicted labels [N].
        flagged: bool [N], True where at least one detector flags the input.
        scores: detector name -> scores [N] (higher = more suspicious).
        flags: detector name -> bool flags [N] (score above that detector's threshold).
        thresholds: detector name -> threshold.
        fpr: detector name -> the false-positive rate its threshold was calibrated for.
        seconds: detector name -> wall time of scoring the batch.
    """

    labels: torch.Tensor
    flagged: torch.Tensor
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    flags: dict[str, torch.Tensor] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    fpr: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


class Guard:
    """Input detectors around one model, calibrated together.

    Args:
        model: the classifier to guard (never modified).
        detectors: a registry name (``"kde"``), a list of names and/or :class:`InputDetector`
            instances, or a mapping name -> parameters (``{"mutation": {"n_mutants": 50}}``).
            Instances are copied with their parameters (the ``fpr`` is set by the guard).
        fpr: target false-positive rate on clean inputs. With ``split_fpr`` (default) each of
            the m detectors is calibrated at ``fpr / m`` (Bonferroni), so that ``flagged`` (any
            detector) stays within ``fpr`` overall; otherwise each detector gets ``fpr``.
        split_fpr: see ``fpr``.
        seed: passed to detectors built from names or mappings.
    """

    def __init__(self, model: nn.Module, detectors: DetectorSpec, fpr: float = 0.05, *,
                 split_fpr: bool = True, seed: int = 0) -> None:
        self.model = model
        self.detectors = detectors
        self.fpr = fpr
        self.split_fpr = split_fpr
        self.seed = seed

    def _build(self) -> dict[str, InputDetector]:
        spec = self.detectors
        if isinstance(spec, (str, InputDetector)):
            spec = [spec]
        items: list[tuple[str, type, dict[str, Any]]] = []
        if isinstance(spec, Mapping):
            for name, params in spec.items():
                items.append((name, get("input_detector", name), {"seed": self.seed, **dict(params or {})}))
        else:
            for d in spec:
                if isinstance(d, InputDetector):
                    items.append((d.name, type(d), d.get_params()))
                elif isinstance(d, str):
                    items.append((d, get("input_detector", d), {"seed": self.seed}))
                else:
                    raise InputError(f"a detector must be a registry name or an InputDetector, got "
                                     f"{type(d).__name__}")
        if not items:
            raise InputError("the guard needs at least one detector")
        names = [n for n, _, _ in items]
        if len(set(names)) != len(names):
            raise InputError(f"each detector may appear once in a guard, got {names}")
        if not 0 < self.fpr < 1:
            raise InputError(f"fpr must be in (0, 1), got {self.fpr}")
        each = self.fpr / len(items) if self.split_fpr else self.fpr
        try:
            return {n: cls(**{**params, "fpr": each}) for n, cls, params in items}
        except TypeError as e:
            raise InputError(f"bad detector parameters: {e}") from None

    def fit(self, clean: ImageData | tuple[torch.Tensor, torch.Tensor], *,
            progress: ProgressFn | None = None) -> Guard:
        """Fit and calibrate every detector on clean images the model was, ideally, not trained
        on (a training-set reference makes scores of unseen clean inputs look more unusual).

        Args:
            clean: clean labelled images (ImageData or (x, y)).
            progress: optional callback receiving ``{"detector": name, "stage": "fit", ...}``.
        """
        if not isinstance(self.model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        self.detectors_ = self._build()
        for det in self.detectors_.values():  # every detector's parameters before any fitting
            det.validate_params()
        probe = clean.x[:2] if isinstance(clean, ImageData) else torch.as_tensor(clean[0])[:2]
        try:
            with torch.no_grad(), frozen(self.model):
                self.model(probe.to(model_device(self.model)))
        except (RuntimeError, AssertionError, ValueError) as e:
            raise InputError(f"the model cannot process the clean images of shape {tuple(probe.shape[1:])}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.fit_seconds_: dict[str, float] = {}
        for name, det in self.detectors_.items():
            if progress:
                progress({"detector": name, "stage": "fit"})
            t0 = time.perf_counter()
            det.fit(self.model, clean)
            self.fit_seconds_[name] = time.perf_counter() - t0
        return self

    def predict(self, x: torch.Tensor, *, progress: ProgressFn | None = None) -> GuardResult:
        """Labels, per-detector scores and flags for images ``x`` [N, C, H, W] in [0, 1]."""
        if not hasattr(self, "detectors_"):
            raise InputError("call Guard.fit(clean) before predict")
        res = GuardResult(labels=torch.empty(0, dtype=torch.long), flagged=torch.zeros(len(x), dtype=torch.bool))
        for name, det in self.detectors_.items():
            if progress:
                progress({"detector": name, "stage": "score"})
            t0 = time.perf_counter()
            s = det.score(x)
            res.seconds[name] = time.perf_counter() - t0
            res.scores[name] = s
            res.flags[name] = s > det.threshold_
            res.thresholds[name] = float(det.threshold_)
            res.fpr[name] = float(det.fpr)
            res.flagged |= res.flags[name]
        first = next(iter(self.detectors_.values()))
        net = first.model_
        dev = model_device(net)
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                res.labels = torch.cat([net(x[i : i + 512].to(dev)).argmax(1).cpu()
                                        for i in range(0, len(x), 512)])
        finally:
            net.train(was)
        return res
