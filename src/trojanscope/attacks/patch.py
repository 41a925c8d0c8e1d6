"""BadNets patch triggers (Gu et al. 2017), as used by Neural Cleanse, Borji and ULP.

A square patch replaces the pixels under it. Placements: a fixed corner or pixel, a random corner
per image, a random location per image, or a random location that avoids occluding the object
("random_free": Borji, *Adversarial examples are useful too*, sec. 3.2, experiment II, where the
patch goes to blank regions of the digit image).
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._params import Constraint, Interval, Options
from .._registry import register
from ..errors import InputError
from ._base import Trigger
from ._images import (
    CORNERS,
    IMAGE_FILE,
    POSITION,
    SEED,
    TENSOR,
    corner_position,
    load_image_tensor,
    lower,
)

_CORNERS = CORNERS
_PATTERNS = ("white", "binary", "color", "colour")
_RANDOM = ("random_corner", "random", "random_free")


def make_pattern(kind: str, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """A [C, size, size] patch: "white" (all ones), "binary" (random 0/1, same for every channel)
    or "color" (random 0/1 per channel)."""
    g = torch.Generator().manual_seed(int(seed))
    if kind == "white":
        return torch.ones(channels, size, size)
    if kind == "binary":
        return (torch.rand(1, size, size, generator=g) < 0.5).float().expand(channels, -1, -1).clone()
    if kind in ("color", "colour"):
        return (torch.rand(channels, size, size, generator=g) < 0.5).float()
    raise InputError(f"unknown patch pattern {kind!r}; use white, binary, color or an image file")


def free_positions(x: torch.Tensor, size: int, g: torch.Generator, *, background_tol: float = 0.1,
                   gap: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, a random top-left pixel where a ``size`` square covers no foreground.

    The background of each image is the per-channel median of its border pixels (0 for MNIST);
    a pixel is foreground when any channel differs from it by more than ``background_tol``, grown by
    ``gap`` pixels so that the patch does not touch the object either. Among the free positions
    one is drawn uniformly; an image with no free position gets a position of least overlap
    (ties drawn at random). One batched program: a box filter counts the foreground under every
    candidate position.

    Args:
        x: images [N, C, H, W].
        size: side of the square.
        g: generator of the random draws.
    Returns:
        rows, cols: int64 [N] on the CPU.
    """
    n, _, h, w = x.shape
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    bg = border.median(dim=-1).values[..., None, None]  # N,C,1,1
    fg = ((x - bg).abs().amax(1, keepdim=True) > background_tol).float()
    if gap > 0:
        fg = F.max_pool2d(fg, 2 * gap + 1, stride=1, padding=gap)
    overlap = (F.avg_pool2d(fg, size, stride=1) * size * size).round().flatten(1).cpu()  # N, P
    # integer overlaps + noise in [0, 0.5): argmin is a uniform draw among the least-covered places
    score = overlap + 0.5 * torch.rand(overlap.shape, generator=g)
    idx = score.argmin(1)
    wc = w - size + 1
    return idx // wc, idx % wc


@register("trigger", "badnets")
class PatchTrigger(Trigger):
    """A square patch pasted onto the image (BadNets, Gu et al. 2017).

    Args:
        size: side of the patch in pixels.
        pattern: "white", "binary", "color", a [C, s, s] / [s, s] tensor in [0, 1], or an image
            file (.png/.npy/.pt) of that size.
        location: a corner name ("top_left", ..., "bottom_right"), "random_corner" (per image),
            "random" (anywhere, per image), "random_free" (per image, where the patch does not
            cover the digit: Borji sec. 3.2), or (row, col) of the top-left pixel (on the
            command line ``location=r,c``).
        margin: distance in pixels from the image border for corner placements.
        background_tol: for "random_free", how far from the background colour a pixel may be and
            still count as background.
        gap: for "random_free", the free border in pixels kept between the patch and the object.
        pattern_seed: seed of random binary/colour patterns.
        seed: seed of random placements.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "size": [Interval(int, 1, None)],
        "pattern": [Options(_PATTERNS, normalize=lower), TENSOR, IMAGE_FILE],
        "location": [Options((*_CORNERS, *_RANDOM), normalize=lower), POSITION],
        "margin": [Interval(int, 0, None)],
        "background_tol": [Interval(float, 0, None)],
        "gap": [Interval(int, 0, None)],
        "pattern_seed": [SEED],
        "seed": [SEED],
    }

    def __init__(self, *, size: int = 3, pattern: str | torch.Tensor = "white",
                 location: str | tuple[int, int] = "bottom_right", margin: int = 1,
                 background_tol: float = 0.1, gap: int = 1,
                 pattern_seed: int = 0, seed: int = 0) -> None:
        self.size = size
        self.pattern = pattern
        self.location = location
        self.margin = margin
        self.background_tol = background_tol
        self.gap = gap
        self.pattern_seed = pattern_seed
        self.seed = seed

    def _patch(self, c: int) -> torch.Tensor:
        s = int(self.size)
        pat = self.pattern
        if isinstance(pat, (str, os.PathLike)) and lower(pat) in _PATTERNS:
            return make_pattern(lower(pat), s, c, int(self.pattern_seed))
        p = load_image_tensor(pat, "pattern")  # a tensor, an array or an image file
        if p.ndim != 3 or p.shape[-1] != s or p.shape[-2] != s:
            raise InputError(f"pattern is {tuple(p.shape)} but size is {s}")
        if float(p.min()) < 0 or float(p.max()) > 1:
            raise InputError("pattern values must be in [0, 1]")
        if p.shape[0] not in (1, c):
            raise InputError(f"pattern has {p.shape[0]} channels but the images have {c}")
        return p.expand(c, -1, -1) if p.shape[0] == 1 else p

    def _positions(self, n: int, h: int, w: int, g: torch.Generator, x: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        s, m = int(self.size), int(self.margin)
        if s > min(h, w):
            raise InputError(f"a {s}x{s} patch does not fit a {h}x{w} image")
        if isinstance(self.location, (tuple, list)):
            r, c = (int(v) for v in self.location)
            if not (0 <= r <= h - s and 0 <= c <= w - s):
                raise InputError(f"patch at {tuple(self.location)} does not fit a {h}x{w} image")
            return torch.full((n,), r), torch.full((n,), c)
        loc = lower(self.location)
        if loc in _CORNERS:
            r, c = corner_position(loc, (s, s), (h, w), m)
            return torch.full((n,), r), torch.full((n,), c)
        if loc == "random_corner":
            corner = [corner_position(k, (s, s), (h, w), m) for k in _CORNERS]
            pick = torch.randint(0, 4, (n,), generator=g)
            rc = torch.tensor(corner)[pick]
            return rc[:, 0], rc[:, 1]
        if loc == "random":
            return (torch.randint(0, h - s + 1, (n,), generator=g),
                    torch.randint(0, w - s + 1, (n,), generator=g))
        if loc == "random_free":
            if x is None:
                raise InputError("location 'random_free' depends on the image")
            return free_positions(x, s, g, background_tol=float(self.background_tol),
                                  gap=int(self.gap))
        raise AssertionError(f"location {self.location!r} passed validate_params")  # pragma: no cover

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        patch = self._patch(c).to(x)
        rows, cols = self._positions(n, h, w, g, x)
        s = patch.shape[-1]
        ar = torch.arange(s)
        rr = (rows[:, None] + ar[None]).to(x.device)  # [N, s]
        cc = (cols[:, None] + ar[None]).to(x.device)
        bidx = torch.arange(n, device=x.device)[:, None, None]
        xv = x.permute(0, 2, 3, 1)  # view: N,H,W,C
        xv[bidx, rr[:, :, None], cc[:, None, :]] = patch.permute(1, 2, 0)[None].expand(n, -1, -1, -1)
        return x

    def mask_pattern(self, in_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mask [1,H,W], pattern [C,H,W]) of a fixed placement; None for random placements."""
        self.validate_params()
        if not isinstance(self.location, (tuple, list)) and lower(self.location) in _RANDOM:
            return None
        c, h, w = in_shape
        x = torch.zeros(1, c, h, w)
        stamped = self._apply(x.clone(), torch.Generator().manual_seed(0))
        mask = torch.zeros(1, h, w)
        rows, cols = self._positions(1, h, w, torch.Generator().manual_seed(0))
        r, cc = int(rows[0]), int(cols[0])
        s = int(self.size)
        mask[:, r : r + s, cc : cc + s] = 1
        return mask, stamped[0]
