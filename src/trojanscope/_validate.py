"""Input validation shared by every entry point: clear errors instead of torch tracebacks."""

from __future__ import annotations

import torch

from .errors import InputError


def check_images(x: object, name: str = "images", in_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Check a float NCHW tensor with values in [0, 1] and no NaN; returns it unchanged.

    Args:
        x: the images.
        name: what to call them in the error message.
        in_shape: expected (C, H, W), when known.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(
            f"{name} must be a 4-D NCHW tensor, got shape {tuple(x.shape)}"
            + (" (add a batch dimension with x[None])" if x.ndim == 3 else "")
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (0 images)")
    if not x.is_floating_point():
        raise InputError(f"{name} must be float in [0, 1], got dtype {x.dtype}; divide uint8 by 255")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(
            f"{name} must have values in [0, 1] (found [{lo:.3g}, {hi:.3g}]); "
            "normalisation belongs to the model (see --normalize)"
        )
    if in_shape is not None and tuple(x.shape[1:]) != tuple(in_shape):
        raise InputError(
            f"{name} have shape {tuple(x.shape[1:])} per image but the model takes {tuple(in_shape)}"
        )
    return x


def check_labels(y: object, n: int, num_classes: int | None = None, name: str = "labels") -> torch.Tensor:
    """Check integer labels of length ``n`` within ``[0, num_classes)``; returns int64 tensor."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},) to match the images, got {tuple(y.shape)}")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise InputError(f"{name} must be integer class indices")
    y = y.long()
    if n and int(y.min()) < 0:
        raise InputError(f"{name} contain a negative class index ({int(y.min())})")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise InputError(
            f"{name} contain class {int(y.max())} but the model has {num_classes} classes"
        )
    return y


def check_class(c: int, num_classes: int, name: str = "class") -> int:
    if not 0 <= int(c) < num_classes:
        raise InputError(f"{name} {c} is out of range for {num_classes} classes")
    return int(c)


def check_logits(out: object, n: int, num_classes: int | None = None) -> torch.Tensor:
    """Check what a model returned: a finite [N, K] tensor."""
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returned {type(out).__name__}, expected a logits tensor")
    if out.ndim != 2 or out.shape[0] != n:
        raise InputError(f"the model returned shape {tuple(out.shape)}, expected ({n}, num_classes)")
    if num_classes is not None and out.shape[1] != num_classes:
        raise InputError(f"the model returned {out.shape[1]} classes, expected {num_classes}")
    if not torch.isfinite(out).all():
        raise InputError("the model returned NaN or infinite outputs")
    return out
