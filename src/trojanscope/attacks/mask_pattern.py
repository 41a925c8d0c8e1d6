"""Perceptible mask+pattern embedding (Neural Cleanse, Wang et al. 2019, eq. 2; L-RED eq. 12):

``x' = (1 - m) * x + m * u``, with the mask m in [0, 1] ([1, H, W], shared by the channels, or
[C, H, W]) and the pattern u in [0, 1] ([C, H, W]). Any fixed trigger can be written this way,
which is also the form Neural Cleanse reverse-engineers, so a reversed trigger can be
re-applied with this class.
"""

from __future__ import annotations

from numbers import Real
from typing import ClassVar

import torch

from .._params import Constraint, Interval
from .._registry import register
from ..errors import InputError
from ._base import Trigger
from ._images import IMAGE_FILE, TENSOR, load_image_tensor


@register("trigger", "mask_pattern")
class MaskPatternTrigger(Trigger):
    """Stamp ``x (1 - m) + u m`` (Neural Cleanse eq. 2).

    Args:
        mask: m, a [1, H, W], [H, W] or [C, H, W] tensor with values in [0, 1], or a file
            (.pt, .npy, .png) holding one.
        pattern: u, a [C, H, W] (or [1, H, W], repeated over channels) tensor in [0, 1], a file,
            or a number in [0, 1] (a constant colour, e.g. 1 = white).
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "mask": [TENSOR, IMAGE_FILE, None],
        "pattern": [Interval(float, 0, 1), TENSOR, IMAGE_FILE],
    }

    def __init__(self, *, mask: torch.Tensor | str | None = None,
                 pattern: torch.Tensor | str | float = 1.0) -> None:
        self.mask = mask
        self.pattern = pattern

    def _tensors(self, in_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = in_shape
        if self.mask is None:
            raise InputError("mask_pattern needs mask= (a [1, H, W] or [C, H, W] tensor in [0, 1], "
                             "or a .pt/.npy/.png file)")
        m = load_image_tensor(self.mask, "mask")
        if m.ndim != 3 or m.shape[0] not in (1, c) or tuple(m.shape[1:]) != (h, w):
            raise InputError(f"mask is {tuple(m.shape)} but the images are {tuple(in_shape)}; "
                             f"it must be [1, {h}, {w}] or [{c}, {h}, {w}]")
        if isinstance(self.pattern, Real):  # a constant colour
            u = torch.full((c, h, w), float(self.pattern))
        else:
            u = load_image_tensor(self.pattern, "pattern")
            if u.ndim != 3 or u.shape[0] not in (1, c) or tuple(u.shape[1:]) != (h, w):
                raise InputError(f"pattern is {tuple(u.shape)} but the images are {tuple(in_shape)}")
            u = u.expand(c, -1, -1)
        for name, t in (("mask", m), ("pattern", u)):
            if float(t.min()) < 0 or float(t.max()) > 1:
                raise InputError(f"{name} values must be in [0, 1]")
        return m, u

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        m, u = self._tensors(tuple(x.shape[1:]))
        m, u = m.to(x), u.to(x)
        return x * (1 - m) + u * m

    def mask_pattern(self, in_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mask, pattern): the mask is [1, H, W] when it is shared by the channels, else [C, H, W]."""
        self.validate_params()
        m, u = self._tensors(in_shape)
        if m.shape[0] > 1 and bool((m == m[:1]).all()):
            m = m[:1]
        return m.clone(), u.clone()

