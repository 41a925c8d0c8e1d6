"""Image helpers shared by the triggers: reading a pattern or mask from a file, fitting an image
to the input shape, corner placement, 8-bit rounding, and the constraints of the parameters they
share (checked by :meth:`~trojanscope._params.Configurable.validate_params`).

Parameters arrive typed: text from the command line (``--attack-param amplitude=25/255``) is
parsed by the CLI (:func:`trojanscope.cli._options.parse_value`), never here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._params import FilePath, InstanceOf, Interval, Pair
from ..errors import InputError

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
#: the files :func:`load_image_tensor` reads
IMAGE_SUFFIXES = (".pt", ".pth", ".npy", ".png", ".jpg", ".jpeg", ".bmp")
IMAGE_FILE = FilePath(IMAGE_SUFFIXES, what="an image file (.png, .npy, .pt, ...)")
TENSOR = InstanceOf(torch.Tensor, np.ndarray, what="a tensor or array")
SEED = Interval(int, 0, None)
#: the top-left pixel of a placement
POSITION = Pair(Interval(int, 0, None), what="a (row, col) pair")


def lower(v: Any) -> str:
    """The spelling the choice parameters compare: stripped and lower-case (``"Top_Left "``)."""
    return str(v).strip().lower()


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
                t = torch.from_numpy(np.load(p, allow_pickle=False))
            elif suf in (".png", ".jpg", ".jpeg", ".bmp"):
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
