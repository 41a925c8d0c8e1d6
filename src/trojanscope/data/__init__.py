"""Dataset readers. Each returns an :class:`ImageData` of float NCHW images in [0, 1]."""

from __future__ import annotations

from .._registry import available, get
from ._base import ENV_VAR, ImageData, resolve_root
from .digits import load_digits


def load_dataset(name: str, split: str = "train", root: object = None, **kwargs: object) -> ImageData:
    """Load a registered dataset by name (``trojanscope.available("dataset")`` lists them)."""
    return get("dataset", name)(split=split, root=root, **kwargs)


def datasets() -> list[str]:
    return available("dataset")


__all__ = ["ENV_VAR", "ImageData", "datasets", "load_dataset", "load_digits", "resolve_root"]
