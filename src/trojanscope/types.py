"""Typed results. Every result has ``to_dict()`` giving JSON-ready values (tensors -> lists)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .utils import to_jsonable

# Large tensors (masks, patterns, maps) are left out of to_dict() by default; reports render
# them as images instead of megabytes of JSON numbers.
_TENSOR_FIELDS_IN_JSON_MAX = 4096


def _as_dict(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        v = getattr(obj, f.name)
        if isinstance(v, torch.Tensor) and v.numel() > _TENSOR_FIELDS_IN_JSON_MAX:
            out[f.name] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            continue
        if isinstance(v, dict):
            v = {
                k: (
                    {"shape": list(t.shape)}
                    if isinstance(t, torch.Tensor) and t.numel() > _TENSOR_FIELDS_IN_JSON_MAX
                    else t
                )
                for k, t in v.items()
            }
        out[f.name] = to_jsonable(v)
    return out


@dataclass
class ScanResult:
    """Verdict of a post-training model detector.

    Attributes:
        method: registry name of the detector.
        backdoored: the verdict.
        target: the detected target class, or None.
        sources: the detected source classes (empty = all / unknown).
        statistic: the method's test statistic (anomaly index, r_max, AUC score, ...).
        p_value: where the method has one.
        anomaly_index: where the method has one (MAD-based).
        threshold: decision threshold applied to ``statistic`` (or to p_value for p-value tests).
        per_class: per-class values, e.g. {"mask_l1": [...], "anomaly_index": [...]}.
        trigger: reversed trigger tensors, e.g. {"mask": [K,1,H,W], "pattern": [K,C,H,W]}.
            ``mask`` + ``pattern`` stamp as x' = (1 - m) x + m p (Neural Cleanse eq. 2); a
            ``pattern`` alone is additive, x' = clip(x + p, 0, 1) (L-RED).
        extra: anything else method-specific and JSON-able (pairs, iterations, ...).
        seconds: wall time of the scan.
        params: the detector's parameters.
        statistic_key: what ``statistic`` is (e.g. "anomaly_index"); when ``per_class`` has this
            key, it holds the same statistic per class (reports chart it).
        threshold_on: what ``threshold`` is compared with: "statistic" (flagged above it) or
            "p_value" (flagged below it).
    """

    method: str
    backdoored: bool
    target: int | None = None
    sources: list[int] = field(default_factory=list)
    statistic: float = float("nan")
    p_value: float | None = None
    anomaly_index: float | None = None
    threshold: float | None = None
    per_class: dict[str, Any] = field(default_factory=dict)
    trigger: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    statistic_key: str = "statistic"
    threshold_on: str = "statistic"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; the trigger tensors are replaced by their shapes."""
        d = _as_dict(self, skip=("trigger",))
        d["trigger"] = {k: list(v.shape) for k, v in self.trigger.items()}
        return d


@dataclass
class InputScores:
    """Scores of an input detector on a batch (higher = more suspicious)."""

    method: str
    scores: torch.Tensor
    flags: torch.Tensor
    threshold: float
    predictions: torch.Tensor | None = None
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (large tensors are summarised by shape and dtype)."""
        return _as_dict(self)


@dataclass
class MitigationResult:
    """A repaired model and what the repair cost and achieved."""

    method: str
    model: torch.nn.Module
    cta_before: float
    cta_after: float
    asr_before: float | None = None
    asr_after: float | None = None
    asr_true_before: float | None = None
    asr_true_after: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    pruned: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    #: "repaired", "ineffective" (the backdoor still works) or "refused" (clean accuracy fell
    #: by more than the budget, or the weights broke): a refused model must not be used
    verdict: str = "repaired"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, without the repaired model itself."""
        return _as_dict(self, skip=("model",))


@dataclass
class Certificate:
    """Upper bound on the test loss a poisoning attacker can cause (Steinhardt et al. 2017)."""

    defense: str
    eps: float
    upper_bound: float
    attack_loss: float | None = None
    attack_error: float | None = None
    lower_bound: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (large tensors are summarised by shape and dtype)."""
        return _as_dict(self)
