"""Neuron pruning of Neural Cleanse (Wang et al., S&P 2019, sec. VI-B, Figs. 9, 21, 22).

Neurons of the second-to-last layer (or channels of the last convolutional layer) are ranked
by their activation difference between inputs stamped with the reversed trigger and clean
inputs, and switched off (output set to 0) in that order until the model no longer responds
to the reversed trigger.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .._params import Constraint, Interval, Options
from .._registry import register
from ..attacks import Trigger
from ..data import ImageData
from ..errors import InputError
from ..metrics import accuracy, attack_success_rate
from ..models.graph import GraphLayer
from ..models.introspect import last_linear, named_layers, record
from ._base import Mitigation


class _Units:
    """The prunable units of one layer, switched off by zeroing weights (no extra modules, so the
    repaired model keeps its architecture and saves in every format, safetensors included).

    ``penultimate``: unit j is input j of the output layer; zeroing column j of its weight is
    exactly "the neuron outputs 0". ``last_conv``: unit j is output channel j of the last
    convolution; its filter and bias are zeroed, and a BatchNorm2d right after it gets a zero
    shift and running mean so the channel stays 0 after normalisation.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        if layer == "penultimate":
            _, self.layer = last_linear(model)
            self.probe_inputs = True
            self.bn = None
        elif layer == "last_conv":
            convs = named_layers(model, (nn.Conv2d,))
            if not convs:
                raise InputError("the model has no convolution to prune; use layer='penultimate'")
            name, self.layer = convs[-1]
            self.probe_inputs = False
            if isinstance(self.layer, GraphLayer):  # a .pt2 / TorchScript graph: the node's BN
                self.bn = self.layer.bn
            else:
                mods = list(model.named_modules())
                pos = next(i for i, (n, _) in enumerate(mods) if n == name)
                nxt = mods[pos + 1][1] if pos + 1 < len(mods) else None
                self.bn = (nxt.weight, nxt.bias, nxt.running_mean) if isinstance(nxt, nn.BatchNorm2d) else None
        else:
            raise InputError(f"unknown layer {layer!r}; use penultimate or last_conv")

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor :meth:`prune` edits (to undo a step)."""
        out = [self.layer.weight]
        if not self.probe_inputs:
            out += [t for t in (self.layer.bias, *(self.bn or ())) if t is not None]
        return out

    @property
    def count(self) -> int:
        w = self.layer.weight
        return int(w.shape[1] if self.probe_inputs else w.shape[0])

    def pruned(self) -> torch.Tensor:
        """Bool [count]: units already switched off (read back from the weights)."""
        w = self.layer.weight
        w = w.t() if self.probe_inputs else w
        return (w.flatten(1) == 0).all(1)

    @torch.no_grad()
    def prune(self, idx: torch.Tensor) -> None:
        if self.probe_inputs:
            self.layer.weight[:, idx] = 0
            return
        self.layer.weight[idx] = 0
        if self.layer.bias is not None:
            self.layer.bias[idx] = 0
        if self.bn is not None:  # (weight, bias, running_mean) of the BatchNorm after it
            self.bn[1][idx] = 0
            self.bn[2][idx] = 0


@register("mitigation", "prune")
class NeuronPruning(Mitigation):
    """Prune backdoor neurons in rank order until the reversed trigger stops working.

    Args:
        layer: "penultimate" (the input of the output layer; the paper's default) or
            "last_conv" (the last convolution's output channels; the paper's choice for
            YouTube Face). Pruning zeroes weights (see :class:`_Units`), so the repaired model
            keeps its architecture.
        step_fraction: share of the layer's neurons pruned per step (at least one).
        max_fraction: never prune more than this share.
        stop_asr: stop when the reversed trigger's success rate on the clean data is below this.
        max_cta_drop: never prune a step that costs more validation accuracy than this (the step
            is undone and pruning stops: fewer pruned neurons); the fallback halves it.
        max_asr, val_fraction, max_rounds, scan_method, scan_params, seed: see :class:`Mitigation`.

    Works on eager models and, through their graph nodes, on .pt2 and TorchScript models.
    """

    def __init__(self, *, layer: str = "penultimate", step_fraction: float = 0.01,
                 max_fraction: float = 0.5, stop_asr: float = 0.05, max_cta_drop: float = 0.02,
                 max_asr: float = 0.1, val_fraction: float = 0.2, max_rounds: int = 1,
                 scan_method: str = "neural_cleanse", scan_params: dict[str, Any] | None = None,
                 seed: int = 0) -> None:
        self.layer = layer
        self.step_fraction = step_fraction
        self.max_fraction = max_fraction
        self.stop_asr = stop_asr
        self.max_cta_drop = max_cta_drop
        self.max_asr = max_asr
        self.val_fraction = val_fraction
        self.max_rounds = max_rounds
        self.scan_method = scan_method
        self.scan_params = scan_params
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "layer": [Options(("penultimate", "last_conv"))],
        "step_fraction": [Interval(float, 0, 1, closed="right")],
        "max_fraction": [Interval(float, 0, 1)],
        "stop_asr": [Interval(float, 0, 1)],
    }

    def _repair(self, model, clean: ImageData, target, trigger: Trigger, test, true_trigger, progress):
        units = _Units(model, self.layer)
        others = clean.of_classes([target], exclude=True)

        def acts(x: torch.Tensor) -> torch.Tensor:
            a = record(model, x, [units.layer], inputs=units.probe_inputs)[0]
            return a.view(len(x), units.count, -1).mean(2)  # conv channels: mean over space

        diff = acts(trigger.apply(others.x)).mean(0) - acts(clean.x).mean(0)
        done = units.pruned()
        diff[done] = -math.inf  # already pruned in an earlier round
        order = diff.argsort(descending=True)
        n = units.count
        step = max(1, math.ceil(self.step_fraction * n))
        limit = int(self.max_fraction * n)
        history: list[dict[str, Any]] = []
        pruned: list[int] = []

        val, cta0 = self._val, self._val_before["cta"]

        def record_step(count: int) -> tuple[float, float]:
            rev_clean = attack_success_rate(model, clean, trigger, target)["asr"]
            row = {"pruned": count, "fraction": count / n, "cta": accuracy(model, test),
                   "val_cta": accuracy(model, val),
                   "asr_reversed": attack_success_rate(model, test, trigger, target)["asr"],
                   "asr_reversed_clean_data": rev_clean}
            if true_trigger is not None:
                row["asr_true"] = attack_success_rate(model, test, true_trigger, target)["asr"]
            history.append(row)
            if progress:
                progress(row)
            return float(rev_clean), float(row["val_cta"])

        asr, _ = record_step(0)
        i = 0
        why = "max_fraction reached"
        while asr >= self.stop_asr and len(pruned) + step <= max(limit, step) and i < n:
            idx = order[i : i + step]
            idx = idx[~done[idx]]
            saved = [t.detach().clone() for t in units.tensors()]
            units.prune(idx)
            i += step
            new_asr, val_cta = record_step(len(pruned) + len(idx))
            if cta0 - val_cta > self.max_cta_drop:  # the CTA budget: undo this step and stop
                with torch.no_grad():
                    for t, v in zip(units.tensors(), saved, strict=True):
                        t.copy_(v)
                history[-1]["undone"] = True
                why = "the next step would exceed the CTA budget"
                break
            pruned += idx.tolist()
            asr = new_asr
        if asr < self.stop_asr:
            why = "reversed trigger no longer works"
        return {"history": history, "pruned": pruned, "layer": self.layer, "stopped_because": why}

    def _fallbacks(self) -> list[dict[str, Any]]:
        return [{"max_cta_drop": self.max_cta_drop / 2}]
