"""The base class of mitigations and what they share: the reversed trigger of a scan, evaluation
of CTA/ASR before and after, and the detect-and-patch loop for multiple triggers.

Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks"
(S&P 2019), sec. VI: every mitigation starts from the target label and the reversed trigger.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any, ClassVar, final

import torch
from torch import fx, nn

from .._params import Configurable, Constraint, InstanceOf, Interval
from .._registry import check_params, create
from .._runtime import ProgressFn, as_image_data, frozen, probe_num_classes
from ..attacks import MaskPatternTrigger, Trigger
from ..data import ImageData
from ..errors import InputError
from ..metrics import accuracy, attack_success_rate
from ..models._logits import LogOutput, ensure_logits
from ..models.graph import (
    freeze_modes,
    logits_view,
    script_to_graph,
    strip_guards,
    swapped,
    trace_friendly,
)
from ..types import MitigationResult, ScanResult
from ..utils import model_device


class ReversedPerturbation(Trigger):
    """An additive pattern reverse engineered by a scan (L-RED): ``x' = clip(x + v)``.

    (A mask + pattern, Neural Cleanse eq. 2, is an :class:`~trojanscope.attacks.MaskPatternTrigger`.)
    """

    def __init__(self, *, pattern: torch.Tensor) -> None:
        self.pattern = pattern

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x + self.pattern.to(x)


def reversed_trigger(scan: ScanResult, target: int | None = None) -> Trigger:
    """The reversed trigger of ``scan`` for its detected target (or ``target``), as a Trigger."""
    t = scan.target if target is None else target
    if t is None:
        raise InputError(f"the {scan.method} scan found no target label: nothing to mitigate")
    tr = scan.trigger
    if "pattern" not in tr:
        raise InputError(f"the {scan.method} scan has no reversed trigger; use neural_cleanse or lred")
    pat = tr["pattern"]
    mask = tr.get("mask")
    # per-class tensors [K, ...] are indexed by target; a single trigger is used as is
    if pat.ndim == 4:
        pat = pat[t]
    if mask is not None and mask.ndim == 4:
        mask = mask[t]
    if mask is None:
        return ReversedPerturbation(pattern=pat.detach().cpu())
    return MaskPatternTrigger(mask=mask.detach().cpu(), pattern=pat.detach().cpu())


def evaluate(model: nn.Module, data: ImageData, target: int | None, triggers: dict[str, Trigger | None]
             ) -> dict[str, float | None]:
    """CTA on ``data`` and ASR of each trigger on its non-target images."""
    out: dict[str, float | None] = {"cta": accuracy(model, data)}
    for name, trig in triggers.items():
        out[name] = None if (trig is None or target is None) else float(
            attack_success_rate(model, data, trig, target)["asr"])
    return out


def editable_copy(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose weights a repair may train and edit, returning logits.

    * TorchScript parts become FX graphs (:func:`~trojanscope.models.graph.script_to_graph`):
      a deep-copied ScriptModule has non-leaf parameters that no optimiser accepts.
    * Exported graphs lose their input-shape guard (so the result re-exports with any batch
      size) and BatchNorm/Dropout frozen in training mode are set to inference behaviour.
    * A probability output gets a log (:func:`~trojanscope.models._logits.ensure_logits`).

    Returns the copy and notes on what was changed.
    """
    notes: list[str] = []
    memo: dict[int, Any] = {}
    shape = tuple(x.shape[1:])
    done: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule) and not any(name.startswith(d + ".") for d in done):
            done.append(name)
            memo[id(m)] = copy.deepcopy(script_to_graph(m, shape))
            notes.append("TorchScript converted to an FX graph for the repair")
    try:
        with warnings.catch_warnings():  # deep-copying a torch.export module warns (torch 2.13)
            warnings.simplefilter("ignore")
            fixed = copy.deepcopy(model, memo)
    except Exception as e:  # some exported/scripted modules cannot be copied
        raise InputError(f"cannot copy the model to repair it ({type(e).__name__}: {e})") from None
    for m in fixed.modules():
        if isinstance(m, fx.GraphModule):
            strip_guards(m)
            trace_friendly(m)
            frozen_nodes = freeze_modes(m)
            if frozen_nodes:
                notes.append(f"graph exported in training mode: {', '.join(frozen_nodes)} set to "
                             "inference behaviour (running statistics, no dropout)")
    for p in fixed.parameters():
        p.requires_grad_(p.is_floating_point())
    return ensure_logits(fixed, x), notes


class _SwapForward(nn.Module):
    """Runs ``model`` with ``source`` replaced by ``view`` (shares all parameters)."""

    def __init__(self, model: nn.Module, source: nn.Module, view: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._pair = (source, view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source, view = self._pair
        with swapped(self.model, source, view):
            return self.model(x)


def training_view(model: nn.Module) -> nn.Module:
    """``model`` for training with cross-entropy: where it is a log wrapped around a graph that
    ends in a softmax, the graph's own pre-softmax logits (``log(softmax(z))`` saturates to
    ``log(eps)`` with zero gradient once the softmax underflows, exactly on the trigger-stamped
    images unlearning must fix); otherwise ``model`` itself. Training the view trains ``model``."""
    for m in model.modules():
        if isinstance(m, LogOutput) and isinstance(m.inner, fx.GraphModule):
            view = logits_view(m.inner)
            if view is not None:
                return _SwapForward(model, m, view)
    return model


class Mitigation(Configurable):
    """``Mitigation(**params).apply(model, clean, scan=None) -> MitigationResult``.

    Never modifies ``model``: the repair works on an editable copy (:func:`editable_copy`). When
    ``scan`` is None, Neural Cleanse runs first (parameters ``scan_params``) to find the target
    and reversed trigger. Subclasses implement :meth:`_repair` (one round); the base class
    evaluates before/after, and repeats detect + repair up to ``max_rounds`` times while the
    scan still flags a label (Neural Cleanse sec. VI: ~3 rounds for 9 triggers on one label).

    The utility budget: clean accuracy (CTA) is measured on held-out clean images before and
    after. When it drops by more than ``max_cta_drop``, the repair is run again with each of
    the method's gentler settings (:meth:`_fallbacks`); when every attempt breaks the budget the
    result's ``verdict`` is ``"refused"`` (the CLI then writes no model). A model whose weights
    are no longer finite is always refused.
    """

    max_rounds: int = 1
    scan_method: str = "neural_cleanse"
    scan_params: dict[str, Any] | None = None
    seed: int = 0
    max_cta_drop: float = 0.02
    max_asr: float = 0.1
    val_fraction: float = 0.2

    #: the parameters every mitigation has; subclasses add their own (see Configurable)
    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "max_cta_drop": [Interval(float, 0, 1)],
        "max_asr": [Interval(float, 0, 1)],
        "val_fraction": [Interval(float, 0, 1)],
        "max_rounds": [Interval(int, 1, None)],
        "scan_method": [InstanceOf(str)],
        "scan_params": [InstanceOf(dict), None],
        "seed": [Interval(int, 0, None)],
    }

    def validate_params(self) -> None:
        """Check the parameters, and those of the scan it runs (``scan_method``, ``scan_params``)."""
        super().validate_params()
        self._scanner().validate_params()

    def _scanner(self) -> Any:
        check_params("model_detector", self.scan_method, self.scan_params or {})
        return create("model_detector", self.scan_method, **(self.scan_params or {}))

    def _run_scan(self, model: nn.Module, clean: ImageData) -> ScanResult:
        return self._scanner().scan(model, clean)

    def _fallbacks(self) -> list[dict[str, Any]]:
        """Parameter overrides tried in turn when a repair breaks the CTA budget (gentlest last)."""
        return []

    @final
    def apply(self, model: nn.Module, clean: ImageData | tuple[torch.Tensor, torch.Tensor],
              scan: ScanResult | None = None, *, test: ImageData | None = None,
              true_trigger: Trigger | None = None, progress: ProgressFn | None = None) -> MitigationResult:
        """Repair ``model``.

        Args:
            model: the (suspected) backdoored classifier; not modified.
            clean: clean labelled images the defender has (a few hundred are enough). A share
                ``val_fraction`` is held out as validation data for early stopping.
            scan: a ScanResult with target and reversed trigger; None runs ``scan_method``.
            test: held-out clean data for CTA/ASR and the budget (default: 30% of ``clean``).
            true_trigger: the real trigger when known, for ASR with it (Table IV).
            progress: optional callback.
        """
        self.validate_params()
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if getattr(model, "forward_only", False):
            raise InputError("this model is forward-only (ONNX): it cannot be repaired; "
                             "load a .pt2, TorchScript, safetensors or state-dict model")
        t0 = time.perf_counter()
        dev = model_device(model)
        data = as_image_data(clean).to(dev)
        with frozen(model):
            num_classes = probe_num_classes(model, data.x)
        data = as_image_data(data, num_classes)
        if test is None:
            data, test = data.split(0.7, seed=self.seed)
        test = as_image_data(test, num_classes).to(dev)
        fit, val = data.split(1 - self.val_fraction, seed=self.seed) if 0 < self.val_fraction < 1 else (data, data)
        if scan is None:
            scan = self._run_scan(model, data)
        rev = reversed_trigger(scan) if scan.backdoored or scan.target is not None else None
        if rev is None:
            raise InputError(f"the {scan.method} scan does not flag this model: nothing to mitigate")
        target = int(scan.target)  # type: ignore[arg-type]
        self.reversed_trigger_ = rev  # what asr/asr_after measure (to re-check a written model)
        triggers = {"asr": rev, "asr_true": true_trigger}
        before = self._evaluate(model, test, target, triggers)
        val_before = evaluate(model, val, target, {"asr": rev})
        attempts: list[dict[str, Any]] = []
        params = self.get_params()
        for override in [{}, *self._fallbacks()]:
            trial = type(self)(**{**params, **override}) if override else self
            fixed, notes = editable_copy(model, data.x)
            fixed, history, pruned, extra = trial._rounds(fixed, fit, val, val_before, target, rev, test,
                                                          true_trigger, progress)
            after = self._evaluate(fixed, test, target, triggers)
            finite = all(bool(torch.isfinite(p).all()) for p in fixed.state_dict().values()
                         if isinstance(p, torch.Tensor) and p.is_floating_point())
            drop = before["cta"] - after["cta"]
            attempts.append({"params": override, "cta_after": after["cta"], "asr_after": after["asr"],
                             "asr_true_after": after["asr_true"], "cta_drop": drop, "finite": finite,
                             "within_budget": finite and drop <= self.max_cta_drop + 1e-9})
            if attempts[-1]["within_budget"]:
                break
        verdict, reason = self._verdict(attempts[-1], before)
        extra.update({"target": target, "scan_method": scan.method, "after": after, "attempts": attempts,
                      "max_cta_drop": self.max_cta_drop, "validation_images": len(val),
                      "fine_tune_images": len(fit), "model_notes": notes})
        return MitigationResult(
            method=self.name, model=fixed, cta_before=before["cta"], cta_after=after["cta"],
            asr_before=before["asr"], asr_after=after["asr"], asr_true_before=before["asr_true"],
            asr_true_after=after["asr_true"], history=history, pruned=pruned, extra=extra,
            seconds=time.perf_counter() - t0, params=params, verdict=verdict, reason=reason)

    def _verdict(self, last: dict[str, Any], before: dict[str, float | None]) -> tuple[str, str]:
        if not last["finite"]:
            return "refused", "the repaired model's weights are no longer finite (NaN/inf)"
        if not last["within_budget"]:
            return "refused", (f"clean accuracy fell by {last['cta_drop']:.2%} "
                               f"({before['cta']:.2%} -> {last['cta_after']:.2%}), more than the budget "
                               f"of {self.max_cta_drop:.2%}, with every setting tried")
        left = [v for v in (last["asr_after"], last["asr_true_after"]) if v is not None]
        if left and max(left) >= self.max_asr:
            return "ineffective", (f"the backdoor still works: attack success {max(left):.2%} after the "
                                   f"repair (at least {self.max_asr:.0%} counts as not repaired)")
        return "repaired", (f"attack success below {self.max_asr:.0%} and clean accuracy within "
                            f"{self.max_cta_drop:.2%} of before")

    def _rounds(self, fixed: nn.Module, fit: ImageData, val: ImageData, val_before: dict[str, float | None],
                target: int, rev: Trigger, test: ImageData, true_trigger: Trigger | None,
                progress: ProgressFn | None) -> tuple[nn.Module, list, list, dict[str, Any]]:
        """Detect + repair rounds on an editable copy (the multiple-trigger loop)."""
        history: list[dict[str, Any]] = []
        pruned: list[Any] = []
        extra: dict[str, Any] = {"rounds": []}
        self._val, self._val_before = val, val_before
        for rnd in range(max(1, self.max_rounds)):
            info = self._repair(fixed, fit, target, rev, test, true_trigger, progress)
            fixed = info.pop("model", fixed)
            history += info.pop("history", [])
            pruned += info.pop("pruned", [])
            extra["rounds"].append({"round": rnd + 1, "target": target, **info})
            if rnd + 1 >= self.max_rounds:
                break
            scan = self._run_scan(fixed, fit)  # another trigger left? (multiple-trigger case)
            if not scan.backdoored or scan.target is None:
                break
            target, rev = int(scan.target), reversed_trigger(scan)
        return fixed, history, pruned, extra

    def _evaluate(self, model: nn.Module, data: ImageData, target: int | None,
                  triggers: dict[str, Trigger | None]) -> dict[str, float | None]:
        """CTA and ASRs of a (repaired) model; mitigations that change what "accepted" means
        (the input filter) override this."""
        return evaluate(model, data, target, triggers)

    def _repair(self, model: nn.Module, clean: ImageData, target: int, trigger: Trigger,
                test: ImageData, true_trigger: Trigger | None, progress: ProgressFn | None
                ) -> dict[str, Any]:  # pragma: no cover
        """Repair ``model`` (a copy, modify freely) for one target; return a dict that may hold
        ``model`` (a replacement module), ``history`` (per-step records), ``pruned`` and extras."""
        raise NotImplementedError
