"""Dataset readers. Each returns an :class:`ImageData` of float NCHW images in [0, 1]."""

from __future__ import annotations

from .._registry import available, get
from ._base import ENV_VAR, ImageData, resolve_root
from ._safe import reading
from .cifar import load_cifar10, read_cifar_bin, read_cifar_pickle
from .digits import load_digits
from .files import images_to_float, load_folder, load_images, load_npz
from .gtsrb import load_gtsrb
from .idx import load_fashion_mnist, load_mnist, read_idx


def load_dataset(name: str, split: str = "train", root: object = None, **kwargs: object) -> ImageData:
    """Load a registered dataset by name (``trojanscope.available("dataset")`` lists them).

    Readers wrap their own failures; any that still escapes a reader (a damaged file of a kind
    no reader foresaw) becomes one :class:`~trojanscope.errors.InputError` too.

    Args:
        name: a registered dataset (``digits``, ``mnist``, ``cifar10``, ``folder``, ``npz``, ...).
        split: ``train`` or ``test`` (``digits`` also ``all``).
        root: the data folder (default: ``$TROJANSCOPE_DATA``); for ``folder``/``npz`` the path.
        **kwargs: reader options (``limit``, ``size``, ...).
    """
    reader = get("dataset", name)
    with reading(root if root is not None else name, f"the {name} dataset"):
        return reader(split=split, root=root, **kwargs)


def datasets() -> list[str]:
    """Names of the registered datasets."""
    return available("dataset")


__all__ = ["ENV_VAR", "ImageData", "datasets", "images_to_float", "load_cifar10", "load_dataset",
           "load_digits", "load_gtsrb", "read_cifar_bin", "read_cifar_pickle",
           "load_fashion_mnist", "load_folder", "load_images", "load_mnist", "load_npz", "read_idx",
           "resolve_root"]
