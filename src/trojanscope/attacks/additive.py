"""Imperceptible additive triggers (Xiang et al., L-RED, eq. 1 and appendix A.4 / A.7 / A.8).

The trigger is an additive perturbation v embedded as ``m(x; v) = [x + v]_c`` (L-RED eq. 1): clipped
to [0, 1], then rounded to 8-bit precision (``round(255 x) / 255``, appendix A.4: "a valid pixel
value will be in the set {0, 1/255, ..., 1}"), which is what makes a 2/255 pattern survive or
vanish. Patterns (defaults are the paper's perturbation sizes):

* ``global`` (A.4.1, the main paper's "global" pattern): in any 2x2 window one and only one
  pixel is perturbed (rows and columns of even index), in all channels, by 2/255;
* ``chessboard`` (A.7 group A): one and only one pixel of any two adjacent pixels is perturbed,
  in all channels, by 2/255;
* ``local_chessboard`` (A.8, MNIST): a 6x6 patch of the chessboard at the bottom right, 25/255;
* ``square`` (A.4.1, "local"): a 2x2 square in one colour channel at a random (seeded) place,
  50/255;
* ``pixel`` (A.8, F-MNIST): one pixel at the bottom right, 50/255;
* ``cross`` (A.7 group B): a 5-pixel plus sign at a random place, 60/255;
* ``l_shape`` (A.7 group C): a 4-pixel L at a random place, 65/255.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .._params import Boolean, Constraint, Interval, Options
from .._registry import register
from ..errors import InputError
from ._base import Trigger
from ._images import CORNERS, POSITION, SEED, corner_position, lower, quantize8

#: pattern -> (default amplitude, default patch size, default location, default channel)
PATTERNS: dict[str, tuple[float, int, str, str]] = {
    "global": (2 / 255, 0, "", "all"),
    "chessboard": (2 / 255, 0, "", "all"),
    "local_chessboard": (25 / 255, 6, "bottom_right", "all"),
    "square": (50 / 255, 2, "random", "random"),
    "pixel": (50 / 255, 1, "bottom_right", "all"),
    "cross": (60 / 255, 3, "random", "all"),
    "l_shape": (65 / 255, 3, "random", "all"),
}


def _shape(pattern: str, s: int) -> torch.Tensor:
    """The binary footprint [kh, kw] of a local pattern."""
    if pattern == "local_chessboard":
        i = torch.arange(s)
        return ((i[:, None] + i[None]) % 2 == 0).float()
    if pattern in ("square", "pixel"):
        return torch.ones(s, s)
    if pattern == "cross":
        k = torch.zeros(s, s)
        k[s // 2, :] = 1
        k[:, s // 2] = 1
        return k
    k = torch.zeros(s, max(s - 1, 1))  # l_shape: a vertical bar and a foot to the right
    k[:, 0] = 1
    k[-1, :] = 1
    return k


@register("trigger", "additive")
class AdditiveTrigger(Trigger):
    """An imperceptible additive perturbation ``round8(clip(x + v))`` (L-RED eq. 1, appendix A.4).

    Args:
        pattern: "global", "chessboard", "local_chessboard", "square", "pixel", "cross" or
            "l_shape".
        amplitude: perturbation size in [-1, 1], e.g. 2/255 (on the command line
            ``amplitude=2/255``); None = the paper's value for the pattern (see the module
            docstring). Negative values darken.
        patch_size: side of a local pattern (6 for local_chessboard, 2 for square, 3 for cross
            and l_shape; the L is ``patch_size`` tall); None = the default.
        location: local patterns only: a corner name, "random" (a fixed place drawn from
            ``pattern_seed``, the same for every image) or (row, col) of the top-left pixel (on
            the command line ``location=r,c``); None = the pattern's default.
        margin: distance from the border for corner placements.
        channel: "all", "random" (one channel drawn from ``pattern_seed``) or a channel index;
            None = the pattern's default ("random" for square, else "all").
        signed: chessboard patterns only: perturb by +amplitude / -amplitude alternately instead
            of amplitude / 0.
        quantize: round to 8-bit precision after clipping (the paper's setting).
        pattern_seed: seed of the random place and channel.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "pattern": [Options(tuple(PATTERNS), normalize=lower)],
        "amplitude": [Interval(float, -1, 1), None],
        "patch_size": [Interval(int, 1, None), None],
        "location": [Options((*CORNERS, "random"), normalize=lower), POSITION, None],
        "margin": [Interval(int, 0, None)],
        "channel": [Options(("all", "random"), normalize=lower), Interval(int, 0, None), None],
        "signed": [Boolean()],
        "quantize": [Boolean()],
        "pattern_seed": [SEED],
    }

    def __init__(self, *, pattern: str = "chessboard", amplitude: float | None = None,
                 patch_size: int | None = None, location: str | tuple[int, int] | None = None,
                 margin: int = 0, channel: int | str | None = None, signed: bool = False,
                 quantize: bool = True, pattern_seed: int = 0) -> None:
        self.pattern = pattern
        self.amplitude = amplitude
        self.patch_size = patch_size
        self.location = location
        self.margin = margin
        self.channel = channel
        self.signed = signed
        self.quantize = quantize
        self.pattern_seed = pattern_seed

    def perturbation(self, in_shape: tuple[int, int, int]) -> torch.Tensor:
        """The perturbation v [C, H, W] (before clipping and rounding), for comparing norms with a
        reverse-engineered pattern (L-RED sec. 3.2: ``||v||_2``)."""
        self.validate_params()
        c, h, w = (int(v) for v in in_shape)
        pattern = lower(self.pattern)
        amp0, s0, loc0, ch0 = PATTERNS[pattern]
        amp = amp0 if self.amplitude is None else float(self.amplitude)
        signed = self.signed
        g = torch.Generator().manual_seed(int(self.pattern_seed))
        plane = torch.zeros(h, w)
        i, j = torch.arange(h), torch.arange(w)
        if pattern == "global":
            plane = ((i[:, None] % 2 == 0) & (j[None] % 2 == 0)).float()
        elif pattern == "chessboard":
            plane = ((i[:, None] + j[None]) % 2 == 0).float()
        else:
            s = s0 if self.patch_size is None else int(self.patch_size)
            k = _shape(pattern, s)
            kh, kw = k.shape
            if kh > h or kw > w:
                raise InputError(f"a {kh}x{kw} {pattern} pattern does not fit a {h}x{w} image")
            loc = loc0 if self.location is None else self.location
            if isinstance(loc, (tuple, list)):
                pos = (int(loc[0]), int(loc[1]))
            elif lower(loc) == "random":
                pos = (int(torch.randint(0, h - kh + 1, (1,), generator=g)),
                       int(torch.randint(0, w - kw + 1, (1,), generator=g)))
            else:
                pos = corner_position(lower(loc), (kh, kw), (h, w), int(self.margin))
            r, cc = pos
            if not (0 <= r <= h - kh and 0 <= cc <= w - kw):
                raise InputError(f"a {kh}x{kw} pattern at {pos} does not fit a {h}x{w} image")
            plane[r : r + kh, cc : cc + kw] = k
        if signed and pattern in ("chessboard", "local_chessboard"):
            inside = torch.zeros(h, w, dtype=torch.bool)
            if pattern == "chessboard":
                inside[:] = True
            else:
                inside[r : r + kh, cc : cc + kw] = True
            plane = torch.where(inside, 2 * plane - 1, plane)
        ch = ch0 if self.channel is None else self.channel
        chans = torch.zeros(c)
        if lower(ch) == "all":
            chans[:] = 1
        elif lower(ch) == "random":
            chans[int(torch.randint(0, c, (1,), generator=g))] = 1
        elif int(ch) >= c:
            raise InputError(f"{self.name}: channel {ch} is out of range for {c}-channel images")
        else:
            chans[int(ch)] = 1
        return amp * chans[:, None, None] * plane[None]

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        v = self.perturbation(tuple(x.shape[1:])).to(x)
        out = (x + v).clamp(0.0, 1.0)
        return quantize8(out) if self.quantize else out
