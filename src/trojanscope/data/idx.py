"""MNIST and Fashion-MNIST in the IDX format (LeCun et al.), ``.gz`` or raw."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from .._registry import register
from ..errors import DataNotFoundError, InputError
from ._base import ImageData, resolve_root, to_float_nchw
from ._safe import read_maybe_compressed

# IDX type codes -> numpy dtypes (big endian); MNIST uses 0x08 (uint8) only.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed when the name ends in .gz) into a numpy array."""
    path = Path(path)
    raw = read_maybe_compressed(path, "the IDX file")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise InputError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    need = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    body = raw[4 + 4 * ndim :]
    if need == 0:
        raise InputError(f"{path}: the IDX file holds no values (shape {shape})")
    if len(body) < need:
        raise InputError(f"{path}: truncated IDX data ({len(body)} of {need} bytes)")
    # IDX is big-endian: convert to the machine's byte order (torch refuses non-native arrays)
    return np.frombuffer(body[:need], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str, dataset: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    # torchvision-style names use '.' instead of '-' before idx
    alt = stem.replace("-idx", ".idx")
    for name in (alt + ".gz", alt):
        if (folder / name).is_file():
            return folder / name
    raise DataNotFoundError(
        f"{dataset}: expected {folder / (stem + '.gz')} (or the uncompressed {stem}); download the "
        f"four IDX files of {dataset} into {folder}"
    )


def load_idx_pair(folder: Path, split: str, dataset: str, class_names: list[str] | None = None,
                  limit: int | None = None) -> ImageData:
    if split not in _FILES:
        raise InputError(f"unknown split {split!r}; use train or test")
    img_stem, lab_stem = _FILES[split]
    x = read_idx(_find(folder, img_stem, dataset))
    y = read_idx(_find(folder, lab_stem, dataset))
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"{dataset} {split}: images {x.shape} and labels {y.shape} do not match")
    if x.dtype != np.uint8 or y.dtype.kind not in "iu":
        raise InputError(f"{dataset} {split}: expected uint8 images and integer labels, got {x.dtype} "
                         f"and {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) > 9:
        raise InputError(f"{dataset} {split}: labels must be 0..9, found {int(y.min())}..{int(y.max())}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return ImageData(to_float_nchw(torch.from_numpy(x.copy())), torch.from_numpy(y.astype(np.int64)),
                     10, name=dataset, class_names=class_names)


@register("dataset", "mnist")
def load_mnist(split: str = "train", root: object = None, limit: int | None = None) -> ImageData:
    """MNIST (60000 train / 10000 test, 1x28x28) from ``root/mnist/*-ubyte[.gz]``."""
    return load_idx_pair(resolve_root(root, "mnist"), split, "mnist", [str(i) for i in range(10)], limit)


@register("dataset", "fashion_mnist")
def load_fashion_mnist(split: str = "train", root: object = None, limit: int | None = None) -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017) from ``root/fashion_mnist``: the IDX files, or the partial
    test set ``t10k-images-first2000.npz`` + ``t10k-labels-first2000.npz`` (key ``arr_0``)."""
    folder = resolve_root(root, "fashion_mnist")
    try:
        return load_idx_pair(folder, split, "fashion_mnist", FASHION_CLASSES, limit)
    except DataNotFoundError:
        part_x, part_y = folder / "t10k-images-first2000.npz", folder / "t10k-labels-first2000.npz"
        if split == "test" and part_x.is_file() and part_y.is_file():
            from .files import read_npz_array

            x = read_npz_array(part_x, ("arr_0", "x"))
            y = read_npz_array(part_y, ("arr_0", "y"))
            if limit is not None:
                x, y = x[:limit], y[:limit]
            return ImageData(to_float_nchw(torch.from_numpy(np.ascontiguousarray(x, np.uint8))),
                             torch.from_numpy(y.astype(np.int64)), 10, name="fashion_mnist",
                             class_names=FASHION_CLASSES)
        raise
