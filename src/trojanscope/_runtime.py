"""The model-preparation sequence every entry point shares (detectors, input detectors,
mitigations, evasion attacks, the guard, the workflows).

    prep = prepared(model, clean, method="neural_cleanse", needs_gradients=True)
    with frozen(prep.model):
        ... prep.model(prep.data.x) ...

:func:`prepared` validates the model and the clean images, moves the images to the model's
device, probes the number of classes (a clear error when the model cannot take the images or
returns something other than finite [N, K] scores) and wraps probability outputs with a log, all
with the model frozen (:class:`frozen`: eval mode, no parameter gradients, restored after).

This module sits at the bottom of the layers (DESIGN.md): it imports only the vocabulary
(errors, validation), the data container and the logits helpers of ``models``; detectors,
mitigations, attacks and workflows import it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ._validate import check_labels, check_logits
from .data import ImageData
from .errors import InputError
from .models._logits import ensure_logits, set_mode
from .utils import model_device

#: The one progress convention: long work calls ``progress(dict)`` with at least a ``"stage"`` or
#: an ``"epoch"`` key (plus ``"method"`` when a workflow runs several methods); the CLI renders
#: the dicts (rich on a terminal, timestamped lines otherwise). The library never prints.
ProgressFn = Callable[[dict[str, Any]], None]

CleanData = ImageData | tuple[torch.Tensor, torch.Tensor]


def as_image_data(clean: CleanData, num_classes: int | None = None) -> ImageData:
    """Accept ImageData or an (x, y) pair; validate either.

    Args:
        clean: the images and labels.
        num_classes: when given, the returned data has this class count (labels are checked
            against it).
    """
    if isinstance(clean, ImageData):
        if num_classes is not None and clean.num_classes != num_classes:
            check_labels(clean.y, len(clean), num_classes)
            return replace(clean, num_classes=num_classes)
        return clean
    if isinstance(clean, (tuple, list)) and len(clean) == 2:
        x, y = clean
        if num_classes is None:
            num_classes = int(torch.as_tensor(y).max()) + 1
        return ImageData(x, torch.as_tensor(y), num_classes, name="clean")
    raise InputError("clean data must be an ImageData or an (images, labels) pair")


def probe_num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Run the model on two images: a clear error if it cannot take them or returns something
    other than finite [N, K] outputs; returns K."""
    try:
        with torch.no_grad():
            out = model(x[:2])
    except RuntimeError as e:
        raise InputError(f"the model cannot process images of shape {tuple(x.shape[1:])}: "
                         f"{str(e).splitlines()[0]}") from None
    check_logits(out, min(2, len(x)))
    return int(out.shape[1])


class frozen:
    """Context: eval mode and no parameter gradients for the duration; restores both after.

    Methods differentiate w.r.t. inputs only, so the model's parameters never change and its
    ``.grad`` fields are never written ("a scan never modifies the model it scans").
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self._training = self.model.training
        self._req = [(p, p.requires_grad) for p in self.model.parameters()]
        set_mode(self.model, False)
        for p, _ in self._req:
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc: object) -> None:
        for p, r in self._req:
            p.requires_grad_(r)
        set_mode(self.model, self._training)


LAYOUTS = ("auto", "channels_last", "contiguous")


def resolve_layout(model: nn.Module, layout: str = "auto") -> str:
    """The memory layout a scan runs ``model`` in: ``"channels_last"`` or ``"contiguous"``.

    ``"auto"`` picks channels-last on a CPU for a model with 4-D (convolution) weights: oneDNN's
    convolutions then skip a reorder of every activation, 1.4-1.8x per image gradient on this
    project's CNNs (``bench/scan_speed.py``), at the same values up to float rounding. Forward-only
    (ONNX) models and models without 4-D weights stay as they are.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    if getattr(model, "forward_only", False) or model_device(model).type != "cpu":
        return "contiguous"
    has_conv = any(p.dim() == 4 for p in model.parameters())
    return "channels_last" if has_conv else "contiguous"


def _channels_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """A channels-last copy of a 4-D tensor whose strides differ from it, else None.

    Compared on strides, not ``is_contiguous(memory_format=...)``: a weight with one input
    channel counts as both layouts there, but oneDNN reads its strides, and a first convolution
    left in the contiguous layout keeps the whole network there (1.0x instead of 1.6x on MNIST).
    """
    if t is None or t.dim() != 4:
        return None
    new = torch.empty_like(t.data, memory_format=torch.channels_last)
    if new.stride() == t.stride():
        return None
    return new.copy_(t.data)


class memory_layout:
    """Context: the model's 4-D parameters and buffers in channels-last memory, restored after.

    The original tensors are kept and put back on exit (also on error), so the model leaves the
    scan bit-identical and in its own layout ("a scan never modifies the model it scans"); the
    parameter objects stay the same, so :class:`frozen` and optimisers holding them are unaffected.
    A module whose tensors cannot be swapped (e.g. a TorchScript buffer) keeps its layout for
    that tensor. ``layout`` as in :func:`resolve_layout`; ``self.layout`` is the one used.
    """

    def __init__(self, model: nn.Module, layout: str = "auto") -> None:
        self.model = model
        self.layout = resolve_layout(model, layout)
        self._saved: list[tuple[Any, str, torch.Tensor, bool]] = []

    def __enter__(self) -> nn.Module:
        if self.layout != "channels_last":
            return self.model
        try:
            for mod in self.model.modules():
                for name, p in list(mod._parameters.items()):
                    new = _channels_last(p)
                    if new is not None and p is not None:
                        self._saved.append((p, name, p.data, True))
                        p.data = new
                for name, b in list(mod._buffers.items()):
                    new = _channels_last(b)
                    if new is not None and b is not None:
                        mod._buffers[name] = new
                        self._saved.append((mod, name, b, False))
        except (RuntimeError, TypeError, AttributeError):
            self._restore()  # a module that refuses the swap: run it as it is
            self.layout = "contiguous"
        return self.model

    def _restore(self) -> None:
        for owner, name, orig, is_param in reversed(self._saved):
            if is_param:
                owner.data = orig
            else:
                owner._buffers[name] = orig
        self._saved = []

    def __exit__(self, *exc: object) -> None:
        self._restore()


@dataclass(frozen=True)
class Prepared:
    """A model and its clean images, ready for a method.

    Attributes:
        model: the model returning logits (the caller's module, or a log wrapper around it when
            it returns probabilities); it shares the caller's parameters.
        data: the clean images on the model's device, ``num_classes`` set from the model.
        num_classes: the number of outputs of the model.
        device: the model's device.
    """

    model: nn.Module
    data: ImageData
    num_classes: int
    device: torch.device


def check_model(model: object, *, method: str = "this method", needs_gradients: bool = False) -> nn.Module:
    """A clear error unless ``model`` is a torch module (with gradients, when needed)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if needs_gradients:
        from .models.wrap import require_gradients

        require_gradients(model, method)  # an ONNX model has none: say so up front
    return model


def prepared(model: nn.Module, clean: CleanData, *, method: str = "this method",
             needs_gradients: bool = False) -> Prepared:
    """Validate, move to the model's device, probe the class count, ensure logits.

    The model is frozen (eval, no parameter gradients) while it is probed and restored after;
    callers run their method inside ``with frozen(prep.model):``.

    Args:
        model: a classifier taking [0, 1] NCHW input and returning logits or probabilities.
        clean: clean labelled images (ImageData or (x, y)).
        method: name used in error messages.
        needs_gradients: refuse forward-only (ONNX) models with a clear error.

    Raises:
        InputError: not a module, forward-only when gradients are needed, images the model
            cannot take, outputs that are not finite [N, K] scores, labels outside [0, K).
    """
    check_model(model, method=method, needs_gradients=needs_gradients)
    dev = model_device(model)
    data = as_image_data(clean).to(dev)
    with frozen(model):
        num_classes = probe_num_classes(model, data.x)
        data = as_image_data(data, num_classes)
        net = ensure_logits(model, data.x)
    return Prepared(model=net, data=data, num_classes=num_classes, device=torch.device(dev))


__all__ = ["LAYOUTS", "CleanData", "Prepared", "ProgressFn", "as_image_data", "check_model", "frozen",
           "memory_layout", "prepared", "probe_num_classes", "resolve_layout"]
