"""Make any classifier return logits: probability outputs are detected and wrapped with a log."""

from __future__ import annotations

import torch
from torch import nn


def set_mode(module: nn.Module, mode: bool) -> None:
    """``module.train(mode)`` that also works on torch.export modules, which refuse train()/eval()
    (they are frozen in eval mode already)."""
    try:
        module.train(mode)
    except (NotImplementedError, RuntimeError):
        module.training = mode


def looks_like_probabilities(out: torch.Tensor, atol: float = 1e-4) -> bool:
    """True when every row is non-negative and sums to 1 (a softmax output)."""
    return bool(out.ndim == 2 and (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out),
                dtype=out.dtype, device=out.device), atol=atol))


class LogOutput(nn.Module):
    """Wraps a model that returns probabilities so that it returns log-probabilities.

    Log-probabilities are valid logits: softmax(log p) = p, and cross-entropy works unchanged.
    """

    def __init__(self, inner: nn.Module, eps: float = 1e-12) -> None:
        super().__init__()
        self.inner = inner
        self.eps = eps
        for attr in ("num_classes", "in_shape"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.inner(x).clamp_min(self.eps))

    def train(self, mode: bool = True) -> LogOutput:
        self.training = mode
        set_mode(self.inner, mode)
        return self


def ensure_logits(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Return ``model`` itself, or a :class:`LogOutput` wrapper when it outputs probabilities."""
    if isinstance(model, LogOutput):
        return model
    with torch.no_grad():
        out = model(x[: min(len(x), 32)])
    return LogOutput(model) if looks_like_probabilities(out) else model
