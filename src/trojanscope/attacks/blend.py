"""Blending and multiplicative triggers (Chen et al. 2017 blended injection; Borji, *Adversarial
examples are useful too*, sec. 3.3, experiment III).

* ``blend`` with ``mode="mix"``: ``(1 - a) x + a I`` (Chen et al.'s blended injection; a
  fractional mask+pattern with mask ``a`` everywhere, Neural Cleanse eq. 2);
* ``blend`` with ``mode="add"``: ``clip(x + a I)``; with a bank of target-class images and
  ``alpha=0.1`` this is Borji's ``I_source + 0.1 * I_target`` where ``I_target`` is a random image
  of the target class, drawn per poisoned sample;
* ``multiply``: ``clip(factor * x)`` (Borji's "multiplying the digit image by 2").
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .._params import Boolean, Constraint, Interval, Options
from .._registry import register
from ..errors import InputError
from ._base import Trigger
from ._images import IMAGE_FILE, SEED, TENSOR, fit_image, load_image_tensor, lower, quantize8


@register("trigger", "blend")
class BlendTrigger(Trigger):
    """Blend a fixed image, or a random image from a bank, into every input.

    Args:
        image: the blended image I: "noise" (uniform noise drawn from ``image_seed``, as Chen et
            al.'s random-pattern key), a [C, H, W] tensor / image file, or a bank [M, C, H, W]
            (tensor, .pt or .npy file) from which every poisoned sample draws its own image (Borji
            exp. III: images of the target class). Images of another size are resized
            bilinearly, grey images are repeated over colour channels and colour ones averaged.
        alpha: blend weight a in [0, 1].
        mode: "mix" = ``(1 - a) x + a I``; "add" = ``x + a I``; both clipped to [0, 1].
        quantize: round the result to 8-bit precision (``round(255 x) / 255``).
        image_seed: seed of the "noise" image.
        seed: seed of the per-sample draws from a bank.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "image": [Options(("noise",), normalize=lower), TENSOR, IMAGE_FILE],
        "alpha": [Interval(float, 0, 1)],
        "mode": [Options(("mix", "add"), normalize=lower)],
        "quantize": [Boolean()],
        "image_seed": [SEED],
        "seed": [SEED],
    }

    def __init__(self, *, image: str | torch.Tensor = "noise", alpha: float = 0.1,
                 mode: str = "mix", quantize: bool = False, image_seed: int = 0, seed: int = 0) -> None:
        self.image = image
        self.alpha = alpha
        self.mode = mode
        self.quantize = quantize
        self.image_seed = image_seed
        self.seed = seed

    def _image(self, in_shape: tuple[int, int, int]) -> torch.Tensor:
        """The blended image [C, H, W], or the bank [M, C, H, W], fitted to ``in_shape``."""
        if isinstance(self.image, str) and lower(self.image) == "noise":
            g = torch.Generator().manual_seed(int(self.image_seed))
            return torch.rand(in_shape, generator=g)
        img = load_image_tensor(self.image, "image")
        if img.ndim not in (3, 4) or img.numel() == 0:
            raise InputError(f"image must be [C, H, W] or a bank [M, C, H, W], got {tuple(img.shape)}")
        if float(img.min()) < 0 or float(img.max()) > 1:
            raise InputError("image values must be in [0, 1]")
        return fit_image(img, in_shape, "image")

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        a, mode = float(self.alpha), lower(self.mode)
        img = self._image(tuple(x.shape[1:])).to(x)
        if img.ndim == 4:  # a bank: one image per sample, drawn with the trigger's generator
            img = img[torch.randint(0, len(img), (len(x),), generator=g).to(x.device)]
        out = (1 - a) * x + a * img if mode == "mix" else x + a * img
        out = out.clamp(0.0, 1.0)
        return quantize8(out) if self.quantize else out

    def mask_pattern(self, in_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Mix mode with a fixed image is ``x (1 - m) + I m`` with m = a everywhere; else None."""
        self.validate_params()
        if lower(self.mode) != "mix" or self.quantize:
            return None
        img = self._image(in_shape)
        if img.ndim == 4:
            return None
        a = float(self.alpha)
        return torch.full((1, *in_shape[1:]), a), img


@register("trigger", "multiply")
class MultiplyTrigger(Trigger):
    """``clip(factor * x)``: Borji exp. III multiplies the digit image by 2 (Fig. 18).

    Args:
        factor: the multiplier (> 0).
        quantize: round the result to 8-bit precision.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "factor": [Interval(float, 0, None, closed="neither")],
        "quantize": [Boolean()],
    }

    def __init__(self, *, factor: float = 2.0, quantize: bool = False) -> None:
        self.factor = factor
        self.quantize = quantize

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        out = (x * float(self.factor)).clamp(0.0, 1.0)
        return quantize8(out) if self.quantize else out
