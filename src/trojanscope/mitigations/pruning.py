"""Neuron pruning of Neural Cleanse (Wang et al., S&P 2019, sec. VI-B, Figs. 9, 21, 22).

Neurons of the second-to-last layer (or channels of the last convolutional layer) are ranked
by their activation difference between inputs stamped with the reversed trigger and clean
inputs, and switched off (output set to 0) in that order until the model no longer responds
to the reversed trigger.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._registry import register
from ..attacks import Trigger
from ..data import ImageData
from ..errors import InputError
from ..metrics import accuracy, attack_success_rate
from ..models.introspect import last_linear, named_layers, record
from ._base import Mitigation


class ChannelMask(nn.Module):
    """Multiplies channel (dim 1) activations by a 0/1 mask: pruned channels output 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.mask.view(shape).to(x.dtype)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


@register("mitigation", "prune")
class NeuronPruning(Mitigation):
    """Prune backdoor neurons in rank order until the reversed trigger stops working.

    Args:
        layer: "penultimate" (the input of the output layer; the paper's default) or
            "last_conv" (the last convolution's output channels; the paper's choice for
            YouTube Face). A BatchNorm right after that convolution still adds its bias.
        step_fraction: share of the layer's neurons pruned per step (at least one).
        max_fraction: never prune more than this share.
        stop_asr: stop when the reversed trigger's success rate on the clean data is below this.
        max_rounds, scan_method, scan_params, seed: see :class:`Mitigation`.
    """

    def __init__(self, *, layer: str = "penultimate", step_fraction: float = 0.01,
                 max_fraction: float = 0.5, stop_asr: float = 0.05, max_rounds: int = 1,
                 scan_method: str = "neural_cleanse", scan_params: dict[str, Any] | None = None,
                 seed: int = 0) -> None:
        self.layer = layer
        self.step_fraction = step_fraction
        self.max_fraction = max_fraction
        self.stop_asr = stop_asr
        self.max_rounds = max_rounds
        self.scan_method = scan_method
        self.scan_params = scan_params
        self.seed = seed

    def _mask_layer(self, model: nn.Module) -> tuple[nn.Module, ChannelMask, bool]:
        """(module whose activations rank the neurons, the mask, whether ranking uses its input)."""
        if self.layer == "penultimate":
            name, lin = last_linear(model)
            if isinstance(getattr(model, "_ts_pre_mask", None), ChannelMask):
                return lin, model._ts_pre_mask, True
            mask = ChannelMask(lin.in_features)
            _set_submodule(model, name, nn.Sequential(mask, lin))
            model._ts_pre_mask = mask
            return lin, mask, True
        if self.layer == "last_conv":
            convs = named_layers(model, (nn.Conv2d,))
            if not convs:
                raise InputError("the model has no nn.Conv2d layer to prune; use layer='penultimate'")
            name, conv = convs[-1]
            if isinstance(getattr(model, "_ts_conv_mask", None), ChannelMask):
                return model._ts_conv_mask, model._ts_conv_mask, False
            mask = ChannelMask(conv.out_channels)
            _set_submodule(model, name, nn.Sequential(conv, mask))
            model._ts_conv_mask = mask
            return conv, mask, False
        raise InputError(f"unknown layer {self.layer!r}; use penultimate or last_conv")

    def _repair(self, model, clean: ImageData, target, trigger: Trigger, test, true_trigger, progress):
        probe, mask, use_input = self._mask_layer(model)
        others = clean.of_classes([target], exclude=True)

        def acts(x: torch.Tensor) -> torch.Tensor:
            a = record(model, x, [probe], inputs=use_input)[0]
            c = mask.mask.numel()
            return a.view(len(x), c, -1).mean(2)  # conv channels: mean over space

        diff = acts(trigger.apply(others.x)).mean(0) - acts(clean.x).mean(0)
        diff[mask.mask == 0] = -math.inf  # already pruned in an earlier round
        order = diff.argsort(descending=True)
        n = mask.mask.numel()
        step = max(1, math.ceil(self.step_fraction * n))
        limit = int(self.max_fraction * n)
        history: list[dict[str, Any]] = []
        pruned: list[int] = []

        def record_step() -> float:
            rev_clean = attack_success_rate(model, clean, trigger, target)["asr"]
            row = {"pruned": len(pruned), "fraction": len(pruned) / n, "cta": accuracy(model, test),
                   "asr_reversed": attack_success_rate(model, test, trigger, target)["asr"],
                   "asr_reversed_clean_data": rev_clean}
            if true_trigger is not None:
                row["asr_true"] = attack_success_rate(model, test, true_trigger, target)["asr"]
            history.append(row)
            if progress:
                progress(row)
            return float(rev_clean)

        asr = record_step()
        i = 0
        while asr >= self.stop_asr and len(pruned) + step <= max(limit, step) and i < n:
            idx = order[i : i + step]
            idx = idx[mask.mask[idx] > 0]
            with torch.no_grad():
                mask.mask[idx] = 0
            pruned += idx.tolist()
            i += step
            asr = record_step()
        return {"history": history, "pruned": pruned, "layer": self.layer,
                "stopped_because": "reversed trigger no longer works" if asr < self.stop_asr
                else "max_fraction reached"}
