"""Clean test accuracy (CTA), attack success rate (ASR), confusion matrices, ROC helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ._validate import check_images
from .errors import InputError
from .utils import model_device

if TYPE_CHECKING:
    from .attacks import Trigger
    from .data import ImageData


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels [N] (model in eval mode for the call, mode restored after)."""
    check_images(x)
    was = model.training
    model.eval()
    dev = model_device(model)
    try:
        out = []
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size].to(dev))
            if not bool(torch.isfinite(logits).all()):
                raise InputError("the model returned NaN or infinite outputs; its predictions cannot be judged")
            out.append(logits.argmax(1).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def accuracy(model: nn.Module, data: ImageData) -> float:
    """Clean test accuracy: fraction of ``data`` classified correctly."""
    return float((predict(model, data.x) == data.y.cpu()).float().mean())


def attack_success_rate(model: nn.Module, data: ImageData, trigger: Trigger, target: int,
                        sources: list[int] | None = None) -> dict[str, object]:
    """ASR on test images not of the target class (only ``sources`` when given), stamped.

    Returns ``{"asr": float, "per_source": {class: float}}``.
    """
    keep = data.y != target
    if sources:
        keep &= torch.isin(data.y, torch.as_tensor(sources))
    x, y = data.x[keep], data.y[keep]
    if len(x) == 0:
        return {"asr": float("nan"), "per_source": {}}
    hit = predict(model, trigger.apply(x)) == target
    per = {int(c): float(hit[y == c].float().mean()) for c in torch.unique(y)}
    return {"asr": float(hit.float().mean()), "per_source": per}


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] counts, rows = true class, columns = predicted class."""
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def roc_auc(scores_negative: torch.Tensor | np.ndarray, scores_positive: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve of positives scored above negatives (ties count one half)."""
    from sklearn.metrics import roc_auc_score

    neg = np.asarray(torch.as_tensor(scores_negative).float().cpu(), dtype=float)
    pos = np.asarray(torch.as_tensor(scores_positive).float().cpu(), dtype=float)
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    return float(roc_auc_score(y, np.r_[neg, pos]))


def roc_curve(scores_negative, scores_positive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as in scikit-learn."""
    from sklearn.metrics import roc_curve as _rc

    neg = np.asarray(torch.as_tensor(scores_negative).float().cpu(), dtype=float)
    pos = np.asarray(torch.as_tensor(scores_positive).float().cpu(), dtype=float)
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    return _rc(y, np.r_[neg, pos])


def threshold_at_fpr(clean_scores: torch.Tensor, fpr: float) -> float:
    """Smallest threshold t such that at most ``fpr`` of clean scores are > t."""
    s = torch.as_tensor(clean_scores).float().flatten().sort().values
    k = int(np.floor(fpr * len(s)))
    return float(s[len(s) - 1 - k]) if k < len(s) else float(s[0]) - 1.0


def fnr_at_fpr(clean_scores, poisoned_scores, fpr: float) -> float:
    """False-negative rate on ``poisoned_scores`` at the threshold giving ``fpr`` on clean ones."""
    t = threshold_at_fpr(torch.as_tensor(clean_scores), fpr)
    return float((torch.as_tensor(poisoned_scores).float() <= t).float().mean())
