"""The image container every reader returns, and dataset root resolution."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .._validate import check_images, check_labels
from ..errors import DataNotFoundError, InputError
from ..utils import generator

ENV_VAR = "TROJANSCOPE_DATA"


@dataclass
class ImageData:
    """Images (float NCHW in [0, 1]) with int64 labels.

    Attributes:
        x: images, float32 [N, C, H, W] in [0, 1].
        y: labels, int64 [N].
        num_classes: number of classes of the task (may exceed ``y.max()+1``).
        name: dataset name, recorded in reports.
        class_names: optional human names of the classes.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = ""
    class_names: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_images(self.x, name=f"{self.name or 'dataset'} images")
        self.y = check_labels(self.y, self.x.shape[0], self.num_classes)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | list[int]) -> ImageData:
        index = torch.as_tensor(index, dtype=torch.long)
        if index.numel() == 0:
            raise InputError(f"empty subset of {self.name or 'dataset'}")
        return replace(self, x=self.x[index], y=self.y[index])

    def of_classes(self, classes: list[int] | set[int], exclude: bool = False) -> ImageData:
        """Images whose label is in ``classes`` (or not in it, with ``exclude``)."""
        keep = torch.isin(self.y, torch.as_tensor(sorted(classes), dtype=torch.long))
        return self.subset(torch.nonzero(~keep if exclude else keep).flatten())

    def clean_subset(self, n_per_class: int, seed: int = 0) -> ImageData:
        """Deterministic sample of ``n_per_class`` images of every class (all when fewer exist).

        Detectors get their few clean images from here; the same seed gives the same images.
        """
        if n_per_class <= 0:
            raise InputError("n_per_class must be positive")
        perm, rank = self._shuffled_ranks(seed)
        idx = perm[rank < n_per_class]
        if idx.numel() == 0:
            raise InputError(f"{self.name or 'dataset'} has no images to sample from")
        return self.subset(idx.sort().values)

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageData, ImageData]:
        """Stratified split into (first, second) with ``fraction`` of each class in the first."""
        if not 0 < fraction < 1:
            raise InputError("split fraction must be in (0, 1)")
        perm, rank = self._shuffled_ranks(seed)
        counts = torch.bincount(self.y, minlength=self.num_classes)
        first = rank < torch.round(fraction * counts.double()).long()[self.y[perm]]
        return self.subset(perm[first].sort().values), self.subset(perm[~first].sort().values)

    def _shuffled_ranks(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded permutation of the images and each one's rank among its class in that order.

        Per-class sampling is then one mask over all classes at once.
        """
        perm = torch.randperm(len(self), generator=generator(seed))
        ys = self.y[perm]
        order = torch.sort(ys, stable=True).indices  # grouped by class, shuffled within
        first_of_class = torch.searchsorted(ys[order], ys[order])
        rank = torch.empty_like(perm)
        rank[order] = torch.arange(len(perm)) - first_of_class
        return perm, rank

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]

    def to(self, device: torch.device | str) -> ImageData:
        return replace(self, x=self.x.to(device), y=self.y.to(device))


def resolve_root(root: str | os.PathLike[str] | None, dataset: str) -> Path:
    """The folder of ``dataset``: ``root`` (CLI ``--data-dir``) or ``$TROJANSCOPE_DATA``.

    Both may point either at the parent holding ``<dataset>/`` or at the dataset folder itself.
    """
    base = root if root is not None else os.environ.get(ENV_VAR)
    if base is None:
        raise DataNotFoundError(
            f"no data folder for {dataset!r}: pass --data-dir DIR (or root=...) or set "
            f"{ENV_VAR}=DIR, where DIR holds {dataset}/ with the dataset files; "
            "the embedded 'digits' dataset needs no files"
        )
    base = Path(base).expanduser()
    for cand in (base / dataset, base):
        if cand.is_dir():
            return cand
    raise DataNotFoundError(f"data folder {base} does not exist (looked for {base / dataset})")


def to_float_nchw(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W] or [N,C,H,W] -> float32 [N,C,H,W] in [0,1]."""
    if x_uint8.ndim == 3:
        x_uint8 = x_uint8[:, None]
    return x_uint8.float().div_(255.0)
