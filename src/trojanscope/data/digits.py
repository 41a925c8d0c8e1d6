"""scikit-learn's bundled 8x8 handwritten digits: the embedded dataset that needs no files."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._registry import register
from ..errors import InputError
from ._base import ImageData


@register("dataset", "digits")
def load_digits(
    split: str = "train", root: object = None, size: int = 8, test_fraction: float = 0.2, seed: int = 0
) -> ImageData:
    """1797 real 8x8 digits (values 0..16), split stratified and deterministically.

    Args:
        split: "train", "test" or "all".
        root: ignored (the data ships with scikit-learn); accepted for a uniform signature.
        size: side length; other than 8 resizes bilinearly (e.g. 16 to leave room for triggers).
        test_fraction: share of each class in the test split.
        seed: seed of the split.
    """
    from sklearn.datasets import load_digits as _sk

    d = _sk()
    x = torch.from_numpy(d.images).float().div_(16.0)[:, None]
    if size != 8:
        if size < 4:
            raise InputError("digits size must be >= 4")
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    data = ImageData(x, torch.from_numpy(d.target).long(), 10, name="digits",
                     class_names=[str(i) for i in range(10)])
    if split == "all":
        return data
    train, test = data.split(1 - test_fraction, seed=seed)
    if split == "train":
        return train
    if split == "test":
        return test
    raise InputError(f"unknown split {split!r}; use train, test or all")
