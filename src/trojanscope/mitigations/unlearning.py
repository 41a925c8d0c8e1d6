"""Unlearning of Neural Cleanse (Wang et al., S&P 2019, sec. VI-C, Table IV).

Fine-tune for one epoch on the defender's clean sample in which ``stamp_fraction`` (20%) of the
images carry the reversed trigger with their labels unchanged, so the model learns to ignore it.
For comparison (Table IV) the stamped trigger may be the true one, or none (clean fine-tuning).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch

from .._params import Boolean, Constraint, Interval, Options
from .._registry import register
from ..attacks import Trigger
from ..data import ImageData
from ..errors import InputError
from ..metrics import accuracy, attack_success_rate
from ..models._logits import set_mode
from ..train import train
from ..utils import generator
from ._base import Mitigation, training_view


def _source(value: Any) -> str:
    """``trigger_source`` as the method reads it: ``--set trigger_source=true`` parses as True."""
    return str(value).strip("'\"").lower()


@register("mitigation", "unlearn")
class Unlearning(Mitigation):
    """Patch the model by fine-tuning on clean + trigger-stamped, correctly labelled images.

    Args:
        trigger_source: "reversed" (the scan's trigger; the paper's method), "true" (the real
            trigger, passed to ``apply(true_trigger=...)``) or "clean" (no stamping).
        stamp_fraction: share of the clean sample stamped with the trigger (20%).
        epochs, lr, batch_size, optimizer: the fine-tuning (one epoch, as in the paper).
        max_grad_norm: gradient-norm clipping (None = off). The stamped images start with a loss
            proportional to the model's logit scale (~75 on a confident softmax-head MNIST model,
            ~5 on ours); unclipped, the first steps cost several points of clean accuracy.
        min_steps: at least this many optimiser steps. The paper's epoch is over 10% of the
            training set (6000 MNIST images, ~190 steps); a defender with a few hundred images
            gets a handful of steps per epoch, which disturbs the model without repairing it.
        checks: how many times during fine-tuning the validation images are evaluated; the
            weights kept are those of the check with the lowest reversed-trigger success among
            those within the CTA budget (early stopping on validation accuracy).
        max_cta_drop: CTA budget (fraction); over it, the fine-tuning is redone with lr / 4,
            then lr / 16 (:meth:`_fallbacks`), and refused if still over.
        max_asr, val_fraction, max_rounds, scan_method, scan_params, seed: see :class:`Mitigation`.

        softmax_logits: fine-tune a softmax-output graph (.pt2, TorchScript) on its own
            pre-softmax logits (:func:`~trojanscope.mitigations._base.training_view`) instead of
            the log of its probabilities. Off by default: on the third-party MNIST benchmark
            the two were close (.pt2: CTA 97.00% with the log, 96.70% with the logits, ASR
            < 1.5% both), the clamped log has no gradient only where the model is saturated.
    """

    def __init__(self, *, trigger_source: str = "reversed", stamp_fraction: float = 0.2,
                 epochs: float = 1, min_steps: int = 100, lr: float = 0.01, batch_size: int = 32,
                 optimizer: str = "sgd", max_grad_norm: float | None = 5.0, checks: int = 10, max_cta_drop: float = 0.02,
                 max_asr: float = 0.1, val_fraction: float = 0.2, softmax_logits: bool = False,
                 max_rounds: int = 1, scan_method: str = "neural_cleanse",
                 scan_params: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.trigger_source = trigger_source
        self.stamp_fraction = stamp_fraction
        self.epochs = epochs
        self.min_steps = min_steps
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.checks = checks
        self.max_cta_drop = max_cta_drop
        self.max_asr = max_asr
        self.val_fraction = val_fraction
        self.softmax_logits = softmax_logits
        self.max_rounds = max_rounds
        self.scan_method = scan_method
        self.scan_params = scan_params
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "trigger_source": [Options(("reversed", "true", "clean"), normalize=_source)],
        "stamp_fraction": [Interval(float, 0, 1)],
        "epochs": [Interval(float, 0, None)],
        "min_steps": [Interval(int, 0, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
        "optimizer": [Options(("sgd", "adam"))],
        "max_grad_norm": [Interval(float, 0, None, closed="neither"), None],
        "checks": [Interval(int, 1, None)],
        "softmax_logits": [Boolean()],
    }

    def _repair(self, model, clean: ImageData, target, trigger: Trigger, test, true_trigger, progress):
        source = _source(self.trigger_source)
        if source == "reversed":
            stamp = trigger
        elif source == "true":
            if true_trigger is None:
                raise InputError("trigger_source='true' needs apply(..., true_trigger=...)")
            stamp = true_trigger
        else:  # "clean" (parameter_constraints allow nothing else)
            stamp = None
        x = clean.x.clone()
        if stamp is not None:
            g = generator(self.seed)
            k = round(self.stamp_fraction * len(x))
            idx = torch.randperm(len(x), generator=g)[:k]
            x[idx] = stamp.apply(x[idx]).to(x)
        epochs = max(self.epochs, self.min_steps * self.batch_size / len(x))
        val, cta0 = self._val, self._val_before["cta"]
        checks: list[dict[str, Any]] = []
        states: list[dict[str, torch.Tensor]] = []

        due = [0]

        def check(rec: dict[str, Any]) -> None:
            if rec["step"] < due[0] and rec["step"] != rec["steps"]:
                return
            due[0] = rec["step"] + max(1, rec["steps"] // max(1, self.checks))
            set_mode(model, False)
            row = {"step": rec["step"], "loss": rec["loss"], "val_cta": accuracy(model, val),
                   "val_asr_reversed": attack_success_rate(model, val, trigger, target)["asr"]}
            set_mode(model, True)
            checks.append(row)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            if progress:
                progress(row)

        try:
            hist = train(training_view(model) if self.softmax_logits else model, replace(clean, x=x), epochs=epochs, lr=self.lr,
                         batch_size=self.batch_size, optimizer=self.optimizer, seed=self.seed,
                         step_progress=check, max_grad_norm=self.max_grad_norm)
        except InputError as e:  # diverged: keep the last good check, if any (the budget decides)
            if "diverged" not in str(e):
                raise
            hist = {"history": [{"diverged": True}]}
        set_mode(model, False)
        if not checks:
            return {"history": hist["history"], "checks": [], "lr": self.lr, "diverged": True}
        # early stopping: the check with the lowest reversed-trigger success within the budget
        ok = [i for i, c in enumerate(checks) if cta0 - c["val_cta"] <= self.max_cta_drop]
        pool = ok or list(range(len(checks)))
        low = min(checks[i]["val_asr_reversed"] for i in pool) + 0.01  # as good as the best ...
        best = max((i for i in pool if checks[i]["val_asr_reversed"] <= low),  # ... and most accurate
                   key=lambda i: (checks[i]["val_cta"], i))
        model.load_state_dict(states[best])
        return {"history": hist["history"], "checks": checks, "trigger_source": self.trigger_source,
                "fine_tune_images": len(x), "epochs": epochs, "lr": self.lr,
                "kept_step": checks[best]["step"], "within_budget_on_validation": bool(ok)}

    def _fallbacks(self) -> list[dict[str, Any]]:
        return [{"lr": self.lr / 4}, {"lr": self.lr / 16}]
