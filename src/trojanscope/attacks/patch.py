"""BadNets patch triggers (Gu et al. 2017), as used by Neural Cleanse, Borji and ULP."""

from __future__ import annotations

import torch

from .._registry import register
from ..errors import InputError
from ._base import Trigger

_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def make_pattern(kind: str, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """A [C, size, size] patch: "white" (all ones), "binary" (random 0/1, same for every channel)
    or "color" (random 0/1 per channel)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "white":
        return torch.ones(channels, size, size)
    if kind == "binary":
        return (torch.rand(1, size, size, generator=g) < 0.5).float().expand(channels, -1, -1).clone()
    if kind == "color":
        return (torch.rand(channels, size, size, generator=g) < 0.5).float()
    raise InputError(f"unknown patch pattern {kind!r}; use white, binary or color")


@register("trigger", "badnets")
class PatchTrigger(Trigger):
    """A square patch pasted onto the image.

    Args:
        size: side of the patch in pixels.
        pattern: "white", "binary", "color", or a [C, s, s] / [s, s] tensor in [0, 1].
        location: a corner name, "random_corner" (per image), "random" (anywhere, per image), or
            (row, col) of the top-left pixel.
        margin: distance in pixels from the image border for corner placements.
        pattern_seed: seed of random binary/colour patterns.
        seed: seed of random placements.
    """

    def __init__(self, *, size: int = 3, pattern: str | torch.Tensor = "white",
                 location: str | tuple[int, int] = "bottom_right", margin: int = 1,
                 pattern_seed: int = 0, seed: int = 0) -> None:
        self.size = size
        self.pattern = pattern
        self.location = location
        self.margin = margin
        self.pattern_seed = pattern_seed
        self.seed = seed

    def _patch(self, c: int) -> torch.Tensor:
        if isinstance(self.pattern, torch.Tensor):
            p = self.pattern.float()
            if p.ndim == 2:
                p = p[None]
            if p.shape[-1] != self.size or p.shape[-2] != self.size:
                raise InputError(f"pattern is {tuple(p.shape)} but size is {self.size}")
            return p.expand(c, -1, -1) if p.shape[0] == 1 else p
        return make_pattern(self.pattern, self.size, c, self.pattern_seed)

    def _positions(self, n: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s, m = self.size, self.margin
        if s + m > min(h, w):
            raise InputError(f"a {s}x{s} patch with margin {m} does not fit a {h}x{w} image")
        corner = {"top_left": (m, m), "top_right": (m, w - s - m),
                  "bottom_left": (h - s - m, m), "bottom_right": (h - s - m, w - s - m)}
        loc = self.location
        if isinstance(loc, (tuple, list)):
            r, c = int(loc[0]), int(loc[1])
            if not (0 <= r <= h - s and 0 <= c <= w - s):
                raise InputError(f"patch at {loc} does not fit a {h}x{w} image")
            return torch.full((n,), r), torch.full((n,), c)
        if loc in corner:
            r, c = corner[loc]
            return torch.full((n,), r), torch.full((n,), c)
        if loc == "random_corner":
            pick = torch.randint(0, 4, (n,), generator=g)
            rc = torch.tensor([corner[k] for k in _CORNERS])[pick]
            return rc[:, 0], rc[:, 1]
        if loc == "random":
            return (torch.randint(0, h - s + 1, (n,), generator=g),
                    torch.randint(0, w - s + 1, (n,), generator=g))
        raise InputError(f"unknown patch location {loc!r}")

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        patch = self._patch(c).to(x)
        rows, cols = self._positions(n, h, w, g)
        s = self.size
        ar = torch.arange(s)
        rr = (rows[:, None] + ar[None]).to(x.device)  # [N, s]
        cc = (cols[:, None] + ar[None]).to(x.device)
        bidx = torch.arange(n, device=x.device)[:, None, None]
        xv = x.permute(0, 2, 3, 1)  # view: N,H,W,C
        xv[bidx, rr[:, :, None], cc[:, None, :]] = patch.permute(1, 2, 0)[None].expand(n, -1, -1, -1)
        return x

    def mask_pattern(self, in_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.location in ("random", "random_corner"):
            return None
        c, h, w = in_shape
        x = torch.zeros(1, c, h, w)
        stamped = self._apply(x.clone(), torch.Generator().manual_seed(0))
        mask = torch.zeros(1, h, w)
        rows, cols = self._positions(1, h, w, torch.Generator().manual_seed(0))
        r, cc = int(rows[0]), int(cols[0])
        mask[:, r : r + self.size, cc : cc + self.size] = 1
        return mask, stamped[0]
