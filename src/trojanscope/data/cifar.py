"""CIFAR-10 (Krizhevsky 2009): the binary version (``.bin``, ``.bin.xz``, ``.bin.gz``) and the
python version, read without unpickling code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .._registry import register
from ..errors import DataNotFoundError, InputError
from ._base import ImageData, resolve_root, to_float_nchw
from ._safe import read_maybe_compressed, reading

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32x32

_BIN = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
_PY = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: records of 1 label byte + 3072 pixel bytes -> (uint8 [N,3,32,32], labels)."""
    path = Path(path)
    raw = read_maybe_compressed(path, "the CIFAR-10 batch", limit=_RECORD * 100_000)
    if len(raw) == 0 or len(raw) % _RECORD:
        raise InputError(f"{path}: {len(raw)} bytes is not a whole number of 3073-byte CIFAR records")
    a = np.frombuffer(raw, np.uint8).reshape(-1, _RECORD)
    y = a[:, 0].astype(np.int64)
    if y.max() > 9:
        raise InputError(f"{path}: label {y.max()} > 9: not a CIFAR-10 binary batch")
    return a[:, 1:].reshape(-1, 3, 32, 32), y


class _ArraysOnly(pickle.Unpickler):
    """Unpickler for the CIFAR python batches: allows numpy arrays and builtins, nothing else.

    The CIFAR pickle holds a dict of bytes, lists and one numpy array; anything that would
    import another callable (code execution) is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise InputError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays")


def read_cifar_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch (``data_batch_1`` ...), safely (see :class:`_ArraysOnly`)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
    except InputError:
        raise
    except Exception as e:  # corrupt pickle: many exception types
        raise InputError(f"{path}: not a valid CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a dict, found {type(d).__name__}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise InputError(f"{path}: missing 'data'/'labels'")
    with reading(path, "the CIFAR-10 python batch"):
        data = np.asarray(data, np.uint8)
        labels = np.asarray(labels, np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise InputError(f"{path}: data shape {data.shape} is not N x 3072")
    if labels.ndim != 1 or len(labels) == 0 or labels.min() < 0 or labels.max() > 9:
        raise InputError(f"{path}: labels must be 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _find_batch(folder: Path, names: list[str], split: str) -> list[Path]:
    found: list[Path] = []
    for n in names:
        stem = n.removesuffix(".bin")
        cands = [folder / (n + s) for s in ("", ".xz", ".gz")] + [folder / "cifar-10-batches-bin" / n]
        if split == "test":
            cands += [folder / "test_batch_first1000.bin.xz", folder / "test_batch_first1000.bin"]
        cands += [folder / stem, folder / "cifar-10-batches-py" / stem]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            raise DataNotFoundError(
                f"cifar10 {split}: expected {folder / n} (binary version, optionally .xz/.gz) or "
                f"{folder / stem} (python version); get cifar-10-binary.tar.gz and extract it into {folder}"
            )
        found.append(hit)
    return found


@register("dataset", "cifar10")
def load_cifar10(split: str = "train", root: object = None, limit: int | None = None) -> ImageData:
    """CIFAR-10 from ``root/cifar10`` (binary batches preferred; python batches accepted).

    On machines holding only the first 1000 test images (``test_batch_first1000.bin.xz``) the
    test split has those 1000.
    """
    if split not in _BIN:
        raise InputError(f"unknown split {split!r}; use train or test")
    folder = resolve_root(root, "cifar10")
    xs, ys = [], []
    for p in _find_batch(folder, _BIN[split], split):
        name = p.name
        x, y = read_cifar_bin(p) if ".bin" in name else read_cifar_pickle(p)
        xs.append(x)
        ys.append(y)
        if limit is not None and sum(len(v) for v in ys) >= limit:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return ImageData(to_float_nchw(torch.from_numpy(x.copy())), torch.from_numpy(y), 10,
                     name="cifar10", class_names=CLASSES)
