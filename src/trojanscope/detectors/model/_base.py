"""The base class of post-training (model-level) detectors; it owns the common steps."""

from __future__ import annotations

import time
from typing import Any, final

import torch
from torch import nn

from ..._params import Configurable
from ..._runtime import ProgressFn, as_image_data, check_model, frozen, prepared, probe_num_classes
from ...data import ImageData
from ...errors import InputError
from ...models._logits import ensure_logits
from ...types import ScanResult
from ...utils import model_device

# re-exported for the detector modules (they import them from here)
__all__ = ["ModelDetector", "ProgressFn", "as_image_data", "frozen", "probe_num_classes"]


class ModelDetector(Configurable):
    """``Detector(**params).scan(model, clean) -> ScanResult``.

    Subclasses take their parameters keyword-only in ``__init__`` (stored under the same names,
    no logic there), declare what each may be in ``parameter_constraints`` (see
    :class:`~trojanscope._params.Configurable`) and implement :meth:`_scan`. The base class
    checks the parameters before any work, validates the inputs, detects
    probability outputs, freezes the model (eval, no parameter gradients; restored after), moves
    the clean images to the model's device, times the scan and records the parameters.
    """

    #: False for forward-only methods that also work on ONNX models (ULP, noise input).
    needs_gradients: bool = True
    #: a method whose paper proposes it without an evaluation and whose false-alarm rate is
    #: known to be poor: the demo runs it only when asked for by name, the CLI warns.
    experimental: str | None = None
    #: False for a data-free method (it needs no clean images).
    needs_data: bool = True
    #: what else the method needs, by name: ``"reference"`` (a clean model of the same task,
    #: passed as the ``reference`` parameter) or ``"ulp"`` (a trained ULP file, the ``ulp_path``
    #: parameter). ``trojanscope scan`` (``--method auto``) runs the method only when the user
    #: gives them.
    needs: tuple[str, ...] = ()

    @classmethod
    def unavailable(cls, context: dict[str, Any]) -> str | None:
        """Why the automatic selection cannot run this method, or None when it can.

        ``context`` holds what the workflow knows: ``in_shape``, ``num_classes``, ``gradients``
        (bool), ``data`` (bool) and the resources of :attr:`needs` (``reference``, ``ulp``).
        The default checks nothing beyond the class attributes (the workflow checks those);
        a method with further conditions (ULP: the file's input shape) overrides it.
        """
        return None

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

        Raises:
            InputError: a parameter outside its ``parameter_constraints`` (before any work), or
                a model or data the method cannot use.
        """
        self.validate_params()
        check_model(model, method=self.name, needs_gradients=self.needs_gradients)
        if clean is None:
            return self._scan_no_data(model, in_shape, num_classes, progress)
        prep = prepared(model, clean, method=self.name, needs_gradients=self.needs_gradients)
        with frozen(model), _WorkCounter(prep.model) as work:
            t0 = time.perf_counter()
            result = self._scan(prep.model, prep.data, prep.num_classes, progress)
            result.seconds = time.perf_counter() - t0
        result.extra["work"] = work.record()
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
            with _WorkCounter(net) as work:
                t0 = time.perf_counter()
                result = self._scan_without_data(net, in_shape, k, progress)  # type: ignore[arg-type]
                result.seconds = time.perf_counter() - t0
        result.extra["work"] = work.record()
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


class _WorkCounter:
    """Counts the images a scan pushes through the model: with autograd on (a gradient pass
    follows, or could) and without. The speed benchmark reports work in these units, which do
    not depend on the machine (bench/scan_speed.py)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.grad, self.plain, self._hook = model, 0, 0, None

    def __enter__(self) -> _WorkCounter:
        self._hook = self.model.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hook is not None:
            self._hook.remove()

    def _count(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        n = int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 0
        if torch.is_grad_enabled():
            self.grad += n
        else:
            self.plain += n

    def record(self) -> dict[str, int]:
        return {"images_with_gradient": self.grad, "images_forward_only": self.plain}
