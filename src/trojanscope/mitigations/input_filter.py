"""Input filter of Neural Cleanse (Wang et al., S&P 2019, sec. VI-A, Fig. 8).

Backdoor neurons are the top ``neuron_fraction`` of the second-to-last layer ranked by how much
more they fire on inputs stamped with the reversed trigger than on clean inputs. An input is
flagged when the mean activation of those neurons exceeds a threshold set for a target
false-positive rate on clean data.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .._params import Constraint, Interval
from .._registry import register
from ..attacks import Trigger
from ..data import ImageData
from ..metrics import accuracy, fnr_at_fpr, predict, threshold_at_fpr
from ..models.introspect import last_linear, record
from ._base import Mitigation


class FilteredModel(nn.Module):
    """A model plus the Neural Cleanse input filter.

    ``forward(x)`` returns the usual logits (so the file format and the API stay the same);
    ``flags(x)`` returns True for inputs the filter rejects; ``predict_with_flags(x)`` both.
    """

    def __init__(self, model: nn.Module, neurons: torch.Tensor, threshold: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("neurons", neurons.long().clone())
        self.threshold = float(threshold)
        for attr in ("num_classes", "in_shape", "arch"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def activation_score(self, x: torch.Tensor) -> torch.Tensor:
        """[N] mean activation of the backdoor neurons (the filter's statistic)."""
        _, lin = last_linear(self.model)
        act = record(self.model, x, [lin], inputs=True)[0]
        return act[:, self.neurons.to(act.device)].mean(1)

    def flags(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation_score(x).cpu() > self.threshold

    def predict_with_flags(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return predict(self.model, x), self.flags(x)

    def saveable(self) -> tuple[nn.Module, dict[str, Any]]:
        """For :func:`~trojanscope.models.save_model`: the model itself, with the filter in the
        sidecar (any format keeps the logits; :meth:`load` restores the flags)."""
        return self.model, {"input_filter": {"neurons": self.neurons.tolist(),
                                             "threshold": self.threshold}}

    @classmethod
    def load(cls, path, **load_kwargs: Any) -> FilteredModel:
        """Load a model file written from a FilteredModel, with its filter. The flags need the
        model's layers: ``.safetensors``, state dict, ``.pt2`` and TorchScript keep them (an
        ONNX file keeps the logits only)."""
        from ..errors import InputError
        from ..models import load_model

        model = load_model(path, **load_kwargs)
        spec = (getattr(model, "metadata", None) or {}).get("input_filter")
        if not isinstance(spec, dict) or "neurons" not in spec or "threshold" not in spec:
            raise InputError(f"{path} holds no input filter (written by `mitigate --method filter`?)")
        return cls(model, torch.as_tensor(spec["neurons"], dtype=torch.long), float(spec["threshold"]))


@register("mitigation", "filter")
class InputFilter(Mitigation):
    """Neural Cleanse's adversarial input filter (sec. VI-A).

    Args:
        neuron_fraction: share of second-to-last-layer neurons taken as backdoor neurons (1%;
            at least one neuron).
        fpr: false-positive rate on clean data that sets the threshold. Rejected clean inputs
            count as errors, so an ``fpr`` above ``max_cta_drop`` breaks the CTA budget: the
            fallbacks use ``max_cta_drop / 2`` and ``/ 4``.
        max_cta_drop, max_asr, val_fraction, max_rounds, scan_method, scan_params, seed: see
            :class:`Mitigation`.
    """

    def __init__(self, *, neuron_fraction: float = 0.01, fpr: float = 0.05, max_cta_drop: float = 0.02,
                 max_asr: float = 0.1, val_fraction: float = 0.2, max_rounds: int = 1,
                 scan_method: str = "neural_cleanse", scan_params: dict[str, Any] | None = None,
                 seed: int = 0) -> None:
        self.neuron_fraction = neuron_fraction
        self.fpr = fpr
        self.max_cta_drop = max_cta_drop
        self.max_asr = max_asr
        self.val_fraction = val_fraction
        self.max_rounds = max_rounds
        self.scan_method = scan_method
        self.scan_params = scan_params
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "neuron_fraction": [Interval(float, 0, 1, closed="right")],
        "fpr": [Interval(float, 0, 1, closed="neither")],
    }

    def _repair(self, model, clean: ImageData, target, trigger: Trigger, test, true_trigger, progress):
        inner = model.model if isinstance(model, FilteredModel) else model
        _, lin = last_linear(inner)
        others = clean.of_classes([target], exclude=True).x
        a_clean = record(inner, clean.x, [lin], inputs=True)[0]
        a_trig = record(inner, trigger.apply(others), [lin], inputs=True)[0]
        diff = a_trig.mean(0) - a_clean.mean(0)
        k = max(1, math.ceil(self.neuron_fraction * diff.numel()))
        neurons = diff.topk(k).indices
        thr = threshold_at_fpr(a_clean[:, neurons].mean(1).cpu(), self.fpr)
        filt = FilteredModel(inner, neurons, thr)
        # Fig. 8: false negatives at several false-positive rates, on held-out data
        t_others = test.of_classes([target], exclude=True).x
        s_clean = filt.activation_score(test.x).cpu()
        fnr: dict[str, dict[str, float]] = {}
        for name, trig in (("reversed", trigger), ("true", true_trigger)):
            if trig is None:
                continue
            s_trig = filt.activation_score(trig.apply(t_others)).cpu()
            fnr[name] = {f"{p:g}": fnr_at_fpr(s_clean, s_trig, p) for p in (0.01, 0.05, 0.10)}
        return {"model": filt, "pruned": neurons.tolist(), "threshold": thr, "neurons": neurons.tolist(),
                "fnr_at_fpr": fnr}

    def _fallbacks(self) -> list[dict[str, Any]]:
        gentler = [f for f in (self.max_cta_drop / 2, self.max_cta_drop / 4) if 0 < f < self.fpr]
        return [{"fpr": f} for f in gentler]

    def _evaluate(self, model: nn.Module, data: ImageData, target: int | None, triggers):
        """Through the filter, a flagged input is rejected: it is neither a correct clean
        prediction nor a successful attack."""
        if not isinstance(model, FilteredModel):
            return super()._evaluate(model, data, target, triggers)
        labels, flags = model.predict_with_flags(data.x)
        out: dict[str, float | None] = {"cta": float(((labels == data.y.cpu()) & ~flags).float().mean())}
        keep = data.y != target
        for name, trig in triggers.items():
            if trig is None or target is None:
                out[name] = None
                continue
            lab, fl = model.predict_with_flags(trig.apply(data.x[keep]))
            out[name] = float(((lab == target) & ~fl).float().mean())
        out["cta_unfiltered"] = accuracy(model.model, data)
        return out
