"""Unlearning of Neural Cleanse (Wang et al., S&P 2019, sec. VI-C, Table IV).

Fine-tune for one epoch on the defender's clean sample in which ``stamp_fraction`` (20%) of the
images carry the reversed trigger with their labels unchanged, so the model learns to ignore it.
For comparison (Table IV) the stamped trigger may be the true one, or none (clean fine-tuning).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .._registry import register
from ..attacks import Trigger
from ..data import ImageData
from ..errors import InputError
from ..train import train
from ..utils import generator
from ._base import Mitigation


@register("mitigation", "unlearn")
class Unlearning(Mitigation):
    """Patch the model by fine-tuning on clean + trigger-stamped, correctly labelled images.

    Args:
        trigger_source: "reversed" (the scan's trigger; the paper's method), "true" (the real
            trigger, passed to ``apply(true_trigger=...)``) or "clean" (no stamping).
        stamp_fraction: share of the clean sample stamped with the trigger (20%).
        epochs, lr, batch_size, optimizer: the fine-tuning (one epoch, as in the paper).
        min_steps: at least this many optimiser steps. The paper's epoch is over 10% of the
            training set (6000 MNIST images, ~190 steps); a defender with a few hundred images
            gets a handful of steps per epoch, which disturbs the model without repairing it.
        max_rounds, scan_method, scan_params, seed: see :class:`Mitigation`.
    """

    def __init__(self, *, trigger_source: str = "reversed", stamp_fraction: float = 0.2,
                 epochs: float = 1, min_steps: int = 100, lr: float = 0.01, batch_size: int = 32,
                 optimizer: str = "sgd",
                 max_rounds: int = 1, scan_method: str = "neural_cleanse",
                 scan_params: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.trigger_source = trigger_source
        self.stamp_fraction = stamp_fraction
        self.epochs = epochs
        self.min_steps = min_steps
        self.lr = lr
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.max_rounds = max_rounds
        self.scan_method = scan_method
        self.scan_params = scan_params
        self.seed = seed

    def _repair(self, model, clean: ImageData, target, trigger: Trigger, test, true_trigger, progress):
        if self.trigger_source == "reversed":
            stamp = trigger
        elif self.trigger_source == "true":
            if true_trigger is None:
                raise InputError("trigger_source='true' needs apply(..., true_trigger=...)")
            stamp = true_trigger
        elif self.trigger_source == "clean":
            stamp = None
        else:
            raise InputError(f"unknown trigger_source {self.trigger_source!r}; use reversed, true or clean")
        if not 0 <= self.stamp_fraction <= 1:
            raise InputError("stamp_fraction must be in [0, 1]")
        x = clean.x.clone()
        if stamp is not None:
            g = generator(self.seed)
            k = round(self.stamp_fraction * len(x))
            idx = torch.randperm(len(x), generator=g)[:k]
            x[idx] = stamp.apply(x[idx]).to(x)
        for p in model.parameters():
            p.requires_grad_(True)
        epochs = max(self.epochs, self.min_steps * self.batch_size / len(x))
        hist = train(model, replace(clean, x=x), epochs=epochs, lr=self.lr,
                     batch_size=self.batch_size, optimizer=self.optimizer, seed=self.seed,
                     progress=progress)
        model.eval()
        return {"history": hist["history"], "trigger_source": self.trigger_source,
                "fine_tune_images": len(x), "epochs": epochs}
