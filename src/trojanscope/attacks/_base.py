"""Triggers and the poisoner (data poisoning for backdoor attacks)."""

from __future__ import annotations

from typing import Any

import torch

from .._params import Configurable
from .._validate import check_images, check_labels
from ..errors import InputError
from ..utils import generator


class Trigger(Configurable):
    """A backdoor trigger: ``apply(x)`` stamps it on float NCHW images in [0, 1].

    Subclasses implement ``_apply(x, g)``; ``g`` is a generator seeded from ``seed`` so that
    random placements are reproducible. Parameters live in ``__init__`` (keyword-only, typed
    values: the CLI parses text); each trigger declares what they may be in
    ``parameter_constraints``, checked before any work by :meth:`apply` and the other public
    methods.
    """

    seed: int = 0

    def apply(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Return triggered copies of ``x`` (never modifies ``x``).

        Raises:
            InputError: a parameter outside its ``parameter_constraints`` (before any work), a
                trigger that does not fit the images, or images that are not NCHW in [0, 1].
        """
        self.validate_params()
        check_images(x)
        g = generator(self.seed if seed is None else seed)
        out = self._apply(x.clone(), g)
        return out.clamp_(0.0, 1.0)

    def _apply(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def mask_pattern(self, in_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mask [1,H,W], pattern [C,H,W]) for triggers that are a fixed mask+pattern, else None.

        Used to compare a reversed trigger with the true one. Subclasses that override this call
        :meth:`validate_params` first.
        """
        return None

    def get_params(self) -> dict[str, Any]:
        """The parameters, with tensors summarised (small ones as lists, large ones by shape)."""
        return {k: (v.tolist() if isinstance(v, torch.Tensor) and v.numel() <= 64 else
                    (list(v.shape) if isinstance(v, torch.Tensor) else v))
                for k, v in vars(self).items() if not k.startswith("_")}


class PoisoningAttack:
    """Poison a training set: stamp a trigger on images of the source classes, relabel to target.

    Args:
        trigger: the Trigger to stamp.
        target: the target class t*.
        sources: source classes S* (None = every class except the target).
        count: number of poisoned images to add (overall), or
        count_per_source: number per source class (L-RED sec. 5.1 uses 500 per source), or
        rate: poisoned images as a fraction of the training set size.
        remove_originals: replace the clean originals of the poisoned images instead of adding
            (L-RED appendix A.4.4).
        seed: which images get poisoned.
    """

    def __init__(self, *, trigger: Trigger, target: int, sources: list[int] | None = None,
                 count: int | None = None, count_per_source: int | None = None,
                 rate: float | None = None, remove_originals: bool = False, seed: int = 0) -> None:
        self.trigger = trigger
        self.target = target
        self.sources = sources
        self.count = count
        self.count_per_source = count_per_source
        self.rate = rate
        self.remove_originals = remove_originals
        self.seed = seed

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (x_p, y_p, poisoned_index): the poisoned training set and where the poison is.

        Poisoned copies are appended after the clean images (or replace their originals).
        """
        check_images(x, "training images")
        y = check_labels(y, len(x), num_classes, "training labels")
        k = num_classes or int(y.max()) + 1
        if not 0 <= self.target < k:
            raise InputError(f"target class {self.target} is out of range for {k} classes")
        sources = list(range(k)) if self.sources is None else list(self.sources)
        sources = [s for s in sources if s != self.target]
        if not sources:
            raise InputError("no source classes left (the sources only contain the target)")
        for s in sources:
            if not 0 <= s < k:
                raise InputError(f"source class {s} is out of range for {k} classes")
        given = sum(v is not None for v in (self.count, self.count_per_source, self.rate))
        if given != 1:
            raise InputError("give exactly one of count, count_per_source or rate")
        g = generator(self.seed)
        chosen: list[torch.Tensor] = []
        if self.count_per_source is not None:
            for s in sources:
                idx = torch.nonzero(y == s).flatten()
                chosen.append(idx[torch.randperm(len(idx), generator=g)[: self.count_per_source]])
        else:
            pool = torch.nonzero(torch.isin(y, torch.as_tensor(sources))).flatten()
            n = self.count if self.count is not None else round(float(self.rate) * len(x))
            if n < 0:
                raise InputError("poison count must be >= 0")
            if n > len(pool) and self.remove_originals:
                raise InputError(f"asked to poison {n} images but the sources have only {len(pool)}")
            # with replacement only when more poison than source images is asked for
            reps = -(-n // max(len(pool), 1))
            perm = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(max(reps, 1))])
            chosen.append(perm[:n])
        idx = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)
        if len(idx) == 0:
            return x.clone(), y.clone(), torch.empty(0, dtype=torch.long)
        xp = self.trigger.apply(x[idx], seed=self.seed + 1)
        yp = torch.full((len(idx),), self.target, dtype=torch.long)
        if self.remove_originals:
            x_out, y_out = x.clone(), y.clone()
            x_out[idx], y_out[idx] = xp, yp
            return x_out, y_out, idx.sort().values
        x_out = torch.cat([x, xp])
        y_out = torch.cat([y, yp])
        return x_out, y_out, torch.arange(len(x), len(x_out))

    def poison_data(self, data):
        """Poison an :class:`~trojanscope.data.ImageData`; returns (poisoned data, poisoned_index)."""
        from dataclasses import replace

        xp, yp, idx = self.poison(data.x, data.y, data.num_classes)
        return replace(data, x=xp, y=yp), idx
