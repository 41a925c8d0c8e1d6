"""The base class of post-training (model-level) detectors; it owns the common steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, final

import torch
from torch import nn

from ..._params import Configurable
from ..._validate import check_labels, check_logits
from ...data import ImageData
from ...errors import InputError
from ...models._logits import ensure_logits, set_mode
from ...types import ScanResult
from ...utils import model_device

ProgressFn = Callable[[dict[str, Any]], None]


def as_image_data(clean: ImageData | tuple[torch.Tensor, torch.Tensor], num_classes: int | None = None
                  ) -> ImageData:
    """Accept ImageData or an (x, y) pair; validate either."""
    if isinstance(clean, ImageData):
        if num_classes is not None and clean.num_classes != num_classes:
            from dataclasses import replace
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

    Detectors differentiate w.r.t. inputs only, so the model's parameters never change and its
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


class ModelDetector(Configurable):
    """``Detector(**params).scan(model, clean) -> ScanResult``.

    Subclasses take their parameters keyword-only in ``__init__`` (stored under the same names,
    no logic there) and implement :meth:`_scan`. The base class validates the inputs, detects
    probability outputs, freezes the model (eval, no parameter gradients; restored after), moves
    the clean images to the model's device, times the scan and records the parameters.
    """

    #: False for forward-only methods that also work on ONNX models (ULP, noise input).
    needs_gradients: bool = True
    #: a method whose paper proposes it without an evaluation and whose false-alarm rate is
    #: known to be poor: the demo runs it only when asked for by name, the CLI warns.
    experimental: str | None = None
    #: False for methods that can scan with no clean data at all (``scan(model, None,
    #: in_shape=...)``); they implement :meth:`_scan_without_data`.
    needs_data: bool = True

    @final
    def scan(self, model: nn.Module, clean: ImageData | tuple[torch.Tensor, torch.Tensor] | None = None,
             *, progress: ProgressFn | None = None, in_shape: tuple[int, int, int] | None = None,
             num_classes: int | None = None) -> ScanResult:
        """Scan ``model`` using a few clean images (or none, for ``needs_data = False`` methods).

        Args:
            model: a classifier taking [0, 1] NCHW input and returning logits (or probabilities).
            clean: clean labelled images (ImageData or (x, y)); None for a data-free scan.
            progress: optional callback receiving dicts of progress information.
            in_shape: (C, H, W) of the model's input, for a data-free scan (default: the model's
                ``in_shape`` attribute when it has one).
            num_classes: expected number of classes, for a data-free scan (checked against the
                model's output; default: whatever the model returns).
        """
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if self.needs_gradients:
            from ...models.wrap import require_gradients

            require_gradients(model, self.name)  # an ONNX model has none: say so up front
        if clean is None:
            return self._scan_no_data(model, in_shape, num_classes, progress)
        data = as_image_data(clean)
        dev = model_device(model)
        data = data.to(dev)
        with frozen(model):
            num_classes = probe_num_classes(model, data.x)
            data = as_image_data(data, num_classes)
            net = ensure_logits(model, data.x)
            t0 = time.perf_counter()
            result = self._scan(net, data, num_classes, progress)
            result.seconds = time.perf_counter() - t0
        result.method = self.name
        result.params = self.get_params()
        if self.experimental:
            result.extra["experimental"] = self.experimental  # travels into the JSON/HTML reports
        return result

    def _scan_no_data(self, model: nn.Module, in_shape: tuple[int, int, int] | None,
                      num_classes: int | None, progress: ProgressFn | None) -> ScanResult:
        """The data-free path of :meth:`scan`: the same checks, probed with random images."""
        if self.needs_data:
            raise InputError(f"the {self.name} method needs clean images of the model's task; "
                             "without data only the data-free methods can scan (e.g. mm_bd)")
        in_shape = in_shape if in_shape is not None else getattr(model, "in_shape", None)
        if in_shape is None:
            raise InputError("a data-free scan needs the model's input shape (C, H, W): "
                             "give --in-shape C,H,W or a sidecar with in_shape")
        in_shape = tuple(int(v) for v in in_shape)  # type: ignore[assignment]
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise InputError(f"in_shape must be three positive numbers (C, H, W), got {in_shape}")
        dev = model_device(model)
        g = torch.Generator().manual_seed(0)
        probe = torch.rand((2, *in_shape), generator=g).to(dev)
        with frozen(model):
            k = probe_num_classes(model, probe)
            if num_classes is not None and k != num_classes:
                raise InputError(f"the model returns {k} classes, but {num_classes} were expected")
            net = ensure_logits(model, probe)
            t0 = time.perf_counter()
            result = self._scan_without_data(net, in_shape, k, progress)  # type: ignore[arg-type]
            result.seconds = time.perf_counter() - t0
        result.method = self.name
        result.params = self.get_params()
        result.extra.setdefault("clean_images", 0)
        if self.experimental:
            result.extra["experimental"] = self.experimental
        return result

    def _scan(self, model: nn.Module, clean: ImageData, num_classes: int,
              progress: ProgressFn | None) -> ScanResult:  # pragma: no cover
        raise NotImplementedError

    def _scan_without_data(self, model: nn.Module, in_shape: tuple[int, int, int], num_classes: int,
                           progress: ProgressFn | None) -> ScanResult:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def for_demo(cls) -> ModelDetector | None:
        """An instance with settings suitable for the digits demo, or None to skip the method."""
        return cls()
