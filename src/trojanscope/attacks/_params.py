"""Parameter coercion shared by the triggers and evasion attacks.

The train CLI passes ``--attack-param k=v`` as strings, so every parameter of a trigger may arrive
as text ("3", "25/255", "3,4", "true", a file path). Classes store what they are given (no logic in
``__init__``) and coerce through these helpers when they run, raising :class:`InputError` with the
parameter's name instead of a torch traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def as_float(v: Any, name: str, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False) -> float:
    """A float from a number or text; fractions such as ``"25/255"`` are accepted."""
    try:
        if isinstance(v, str) and "/" in v:
            num, den = v.split("/", 1)
            f = float(num) / float(den)
        else:
            f = float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        raise InputError(f"{name} must be a number, got {v!r}") from None
    if f != f:
        raise InputError(f"{name} must be a number, got NaN")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise InputError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {f:g}")
    if hi is not None and f > hi:
        raise InputError(f"{name} must be <= {hi:g}, got {f:g}")
    return f


def as_int(v: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """An int from an int, an integral float or text."""
    if isinstance(v, bool):
        raise InputError(f"{name} must be an integer, got {v!r}")
    try:
        f = float(v)
        i = int(f)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be an integer, got {v!r}") from None
    if i != f:
        raise InputError(f"{name} must be an integer, got {v!r}")
    if lo is not None and i < lo:
        raise InputError(f"{name} must be >= {lo}, got {i}")
    if hi is not None and i > hi:
        raise InputError(f"{name} must be <= {hi}, got {i}")
    return i


def as_bool(v: Any, name: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{name} must be true or false, got {v!r}")


def as_choice(v: Any, name: str, choices: tuple[str, ...]) -> str:
    s = str(v).strip().lower()
    if s not in choices:
        raise InputError(f"unknown {name} {v!r}; use one of: {', '.join(choices)}")
    return s


def as_position(v: Any, name: str = "location") -> tuple[int, int] | None:
    """``(row, col)`` from a pair or text ``"r,c"`` / ``"(r, c)"``; None when ``v`` is not one."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, str):
        s = v.strip().strip("()[]")
        if "," not in s:
            return None
        v = s.split(",")
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise InputError(f"{name} must be (row, col), got {v!r}")
        v = [e.strip().strip("()[]") if isinstance(e, str) else e for e in v]  # ["(2", "3)"]
        return as_int(v[0], f"{name} row"), as_int(v[1], f"{name} col")
    return None


def corner_position(corner: str, size: tuple[int, int], hw: tuple[int, int], margin: int
                    ) -> tuple[int, int]:
    """Top-left pixel of a ``size`` box placed in ``corner`` of an ``hw`` image, ``margin`` from the border."""
    (sh, sw), (h, w) = size, hw
    if sh + margin > h or sw + margin > w:
        raise InputError(f"a {sh}x{sw} pattern with margin {margin} does not fit a {h}x{w} image")
    return {"top_left": (margin, margin), "top_right": (margin, w - sw - margin),
            "bottom_left": (h - sh - margin, margin),
            "bottom_right": (h - sh - margin, w - sw - margin)}[corner]


def load_image_tensor(v: Any, name: str) -> torch.Tensor:
    """A float tensor from a tensor, an array-like, or a file (.pt/.pth tensor, .npy, .png/.jpg).

    Images in files with values above 1 (e.g. uint8 arrays) are divided by 255. A 2-D array is one
    channel; an HWC array with 1, 3 or 4 channels last is turned into CHW.
    """
    if isinstance(v, torch.Tensor):
        t = v.detach()
    elif isinstance(v, (str, Path)):
        p = Path(v)
        if not p.is_file():
            raise InputError(f"{name}: no file {str(p)!r}")
        suf = p.suffix.lower()
        try:
            if suf in (".pt", ".pth"):
                t = torch.load(p, map_location="cpu", weights_only=True)
                if not isinstance(t, torch.Tensor):
                    raise InputError(f"{name}: {p} does not hold a single tensor")
            elif suf == ".npy":
                import numpy as np

                t = torch.from_numpy(np.load(p, allow_pickle=False))
            elif suf in (".png", ".jpg", ".jpeg", ".bmp"):
                import numpy as np
                from PIL import Image

                with Image.open(p) as im:
                    t = torch.from_numpy(np.asarray(im.convert("RGB" if im.mode not in ("L", "1")
                                                               else "L")).copy())
            else:
                raise InputError(f"{name}: unsupported file type {suf!r} (use .pt, .npy or .png)")
        except InputError:
            raise
        except Exception as e:  # a corrupt file: say which one
            raise InputError(f"{name}: cannot read {p}: {e}") from None
        if t.ndim == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3):
            t = t.permute(2, 0, 1)[:3]
        if not t.is_floating_point() or float(t.max()) > 1.0:
            t = t.float() / 255.0
    else:
        try:
            t = torch.as_tensor(v)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{name} must be a tensor or a file path, got {type(v).__name__}") from None
    t = t.float()
    if t.ndim == 2:
        t = t[None]
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return t


def fit_image(img: torch.Tensor, in_shape: tuple[int, int, int], name: str) -> torch.Tensor:
    """Adapt a [C', H', W'] (or a bank [M, C', H', W']) image to ``in_shape``: channels are
    averaged (colour -> grey) or repeated (grey -> colour), the size is resized bilinearly."""
    c, h, w = in_shape
    bank = img.ndim == 4
    t = img if bank else img[None]
    if t.ndim != 4:
        raise InputError(f"{name} must be [C, H, W] (or a bank [M, C, H, W]), got {tuple(img.shape)}")
    if t.shape[1] != c:
        if t.shape[1] == 1:
            t = t.expand(-1, c, -1, -1)
        elif c == 1:
            t = t.mean(1, keepdim=True)
        else:
            raise InputError(f"{name} has {t.shape[1]} channels but the images have {c}")
    if tuple(t.shape[-2:]) != (h, w):
        t = F.interpolate(t.float(), size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    return t if bank else t[0]


def quantize8(x: torch.Tensor) -> torch.Tensor:
    """8-bit finite precision (L-RED appendix A.4): ``round(255 x) / 255``."""
    return torch.round(x * 255.0) / 255.0
