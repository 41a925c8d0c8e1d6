"""The base class of mitigations and what they share: the reversed trigger of a scan, evaluation
of CTA/ASR before and after, and the detect-and-patch loop for multiple triggers.

Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks"
(S&P 2019), sec. VI: every mitigation starts from the target label and the reversed trigger.
"""

from __future__ import annotations

import copy
import time
from typing import Any, final

import torch
from torch import nn

from .._params import Configurable
from .._registry import create
from .._runtime import ProgressFn, as_image_data, frozen, probe_num_classes
from ..attacks import MaskPatternTrigger, Trigger
from ..data import ImageData
from ..errors import InputError
from ..metrics import accuracy, attack_success_rate
from ..models._logits import ensure_logits
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


class Mitigation(Configurable):
    """``Mitigation(**params).apply(model, clean, scan=None) -> MitigationResult``.

    Never modifies ``model``: the repair works on a deep copy. When ``scan`` is None, Neural
    Cleanse runs first (parameters ``scan_params``) to find the target and reversed trigger.
    Subclasses implement :meth:`_repair` (one round); the base class evaluates before/after,
    and repeats detect + repair up to ``max_rounds`` times while the scan still flags a label
    (Neural Cleanse sec. VI: ~3 rounds for 9 triggers on one label).
    """

    max_rounds: int = 1
    scan_method: str = "neural_cleanse"
    scan_params: dict[str, Any] | None = None
    seed: int = 0


    def _run_scan(self, model: nn.Module, clean: ImageData) -> ScanResult:
        det = create("model_detector", self.scan_method, **(self.scan_params or {}))
        return det.scan(model, clean)

    @final
    def apply(self, model: nn.Module, clean: ImageData | tuple[torch.Tensor, torch.Tensor],
              scan: ScanResult | None = None, *, test: ImageData | None = None,
              true_trigger: Trigger | None = None, progress: ProgressFn | None = None) -> MitigationResult:
        """Repair ``model``.

        Args:
            model: the (suspected) backdoored classifier; not modified.
            clean: clean labelled images the defender has (a few hundred are enough).
            scan: a ScanResult with target and reversed trigger; None runs ``scan_method``.
            test: held-out clean data for CTA/ASR (default: 30% of ``clean`` held out).
            true_trigger: the real trigger when known, for ASR with it (Table IV).
            progress: optional callback.
        """
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if getattr(model, "forward_only", False):
            raise InputError("this model is forward-only (ONNX): it cannot be repaired; "
                             "load a safetensors, TorchScript or state-dict model")
        t0 = time.perf_counter()
        dev = model_device(model)
        data = as_image_data(clean).to(dev)
        with frozen(model):
            num_classes = probe_num_classes(model, data.x)
        data = as_image_data(data, num_classes)
        if test is None:
            data, test = data.split(0.7, seed=self.seed)
        test = as_image_data(test, num_classes).to(dev)
        try:
            fixed = copy.deepcopy(model)
        except Exception as e:  # some exported/scripted modules cannot be copied
            raise InputError(f"cannot copy the model to repair it ({type(e).__name__}: {e})") from None
        fixed = ensure_logits(fixed, data.x)
        if scan is None:
            scan = self._run_scan(model, data)
        rev = reversed_trigger(scan) if scan.backdoored or scan.target is not None else None
        if rev is None:
            raise InputError(f"the {scan.method} scan does not flag this model: nothing to mitigate")
        target = int(scan.target)  # type: ignore[arg-type]
        first_target, first_rev = target, rev  # the headline ASR uses the first round's trigger
        before = self._evaluate(model, test, target, {"asr": rev, "asr_true": true_trigger})
        history: list[dict[str, Any]] = []
        pruned: list[Any] = []
        extra: dict[str, Any] = {"target": target, "scan_method": scan.method, "rounds": []}
        for rnd in range(max(1, self.max_rounds)):
            info = self._repair(fixed, data, target, rev, test, true_trigger, progress)
            fixed = info.pop("model", fixed)
            history += info.pop("history", [])
            pruned += info.pop("pruned", [])
            extra["rounds"].append({"round": rnd + 1, "target": target, **info})
            if rnd + 1 >= self.max_rounds:
                break
            scan = self._run_scan(fixed, data)  # another trigger left? (multiple-trigger case)
            if not scan.backdoored or scan.target is None:
                break
            target, rev = int(scan.target), reversed_trigger(scan)
        after = self._evaluate(fixed, test, first_target, {"asr": first_rev, "asr_true": true_trigger})
        extra["after"] = after
        return MitigationResult(
            method=self.name, model=fixed, cta_before=before["cta"], cta_after=after["cta"],
            asr_before=before["asr"], asr_after=after["asr"], asr_true_before=before["asr_true"],
            asr_true_after=after["asr_true"], history=history, pruned=pruned, extra=extra,
            seconds=time.perf_counter() - t0, params=self.get_params())

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

    @classmethod
    def for_demo(cls) -> Mitigation | None:
        """Default settings, with the scan's demo settings for when no scan is passed."""
        from .._registry import get

        det = get("model_detector", cls.scan_method).for_demo()
        return cls(scan_params=det.get_params() if det is not None else None)

