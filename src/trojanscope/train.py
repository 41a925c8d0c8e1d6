"""Training and fine-tuning in plain torch, with crop/flip augmentation and a progress callback."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._runtime import ProgressFn
from .data import ImageData
from .errors import InputError
from .utils import generator, model_device


def augment_batch(x: torch.Tensor, g: torch.Generator, crop: int = 0, flip: bool = False) -> torch.Tensor:
    """Random crop with zero padding ``crop`` and random horizontal flip, per image, vectorised."""
    n, _, h, w = x.shape
    if crop > 0:
        xp = F.pad(x, (crop, crop, crop, crop))
        dy = torch.randint(0, 2 * crop + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * crop + 1, (n,), generator=g)
        rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # [N, H]
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # [N, W]
        bidx = torch.arange(n, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        m = (torch.rand(n, generator=g) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def train(
    model: nn.Module,
    data: ImageData,
    *,
    epochs: float = 1,
    batch_size: int = 64,
    lr: float = 0.01,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "none",
    crop: int = 0,
    flip: bool = False,
    seed: int = 0,
    progress: ProgressFn | None = None,
    step_progress: ProgressFn | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune) ``model`` in place on ``data`` with cross-entropy.

    Args:
        model: returns logits; trained on its own device.
        data: training images in [0, 1].
        epochs: may be fractional (e.g. 0.5 for half an epoch of fine-tuning).
        optimizer: "sgd" (with momentum) or "adam".
        schedule: "none", "cosine" or "step" (x0.1 at 50% and 75%).
        crop: random-crop padding in pixels (0 = off); flip: random horizontal flips.
        seed: shuffling and augmentation seed.
        progress: called after every epoch with {"epoch", "loss", "accuracy", "seconds"}.
        step_progress: called about 100 times in all with {"step", "steps", "epoch", "loss"}
            (a one-epoch MNIST run would otherwise show no progress for minutes).
        max_grad_norm: clip the gradient norm to this (None = off). Fine-tuning a model with a
            large logit scale on images it gets very wrong (unlearning) starts with huge
            gradients; clipping keeps the first steps from wrecking the clean accuracy.

    Returns:
        {"loss": last epoch mean loss, "train_accuracy": ..., "seconds": ..., "history": [...]}.
    """
    if len(data) == 0:
        raise InputError("training data is empty")
    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise InputError("epochs, batch_size and lr must be positive")
    out_dim = getattr(model, "num_classes", None)
    if out_dim is not None and data.num_classes > out_dim:
        raise InputError(f"the data has {data.num_classes} classes but the model only {out_dim}")
    dev = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters")
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise InputError(f"unknown optimizer {optimizer!r}; use sgd or adam")
    n = len(data)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    elif schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(total * 0.5), int(total * 0.75)], 0.1)
    elif schedule == "none":
        sched = None
    else:
        raise InputError(f"unknown schedule {schedule!r}; use none, cosine or step")

    g = generator(seed)
    model.train()
    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []
    step = 0
    epoch = 0
    while step < total:
        perm = torch.randperm(n, generator=g)
        tot_loss, correct, seen = 0.0, 0, 0
        for i in range(0, n, batch_size):
            if step >= total:
                break
            idx = perm[i : i + batch_size]
            xb, yb = data.x[idx], data.y[idx]
            if crop or flip:
                xb = augment_batch(xb, g, crop, flip)
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if not torch.isfinite(loss):
                raise InputError("training diverged (loss is NaN/inf); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            tot_loss += float(loss.detach()) * len(idx)
            if step_progress is not None and (step % max(1, total // 100) == 0 or step == total):
                step_progress({"step": step, "steps": total, "epoch": epoch + 1, "loss": float(loss.detach())})
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        epoch += 1
        rec = {"epoch": epoch, "loss": tot_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        if progress is not None:
            progress(rec)
    model.eval()
    return {"loss": history[-1]["loss"], "train_accuracy": history[-1]["accuracy"],
            "seconds": time.perf_counter() - t0, "history": history}
