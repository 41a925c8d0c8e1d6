"""The user's own data: ``npz`` arrays and image ``folder`` trees (PNG/JPEG/PPM via Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._registry import register
from ..errors import DataNotFoundError, InputError
from ..utils import protect_input
from ._base import ImageData, to_float_nchw
from ._safe import MAX_ARRAY_BYTES, check_array, decode_image, npz_member_nbytes, reading

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def read_npz_array(path: str | Path, keys: tuple[str, ...], *, labels: bool = False) -> np.ndarray:
    """The first of ``keys`` found in an ``.npz``; never unpickles (allow_pickle=False).

    The array is checked (numeric dtype, non-empty, native byte order, size bounded by
    :data:`~trojanscope.data._safe.MAX_ARRAY_BYTES` before it is decompressed).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"no such file: {path}")
    protect_input(path)
    with reading(path, "the .npz file", prefix="not a valid .npz file"):
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise InputError(f"{path}: a single .npy array, not an .npz archive of named arrays")
            key = next((k for k in keys if k in z.files), None)
            if key is None:
                raise InputError(f"{path}: none of the arrays {list(keys)} found (has {z.files[:20]})")
            nbytes = npz_member_nbytes(path, key)
            if nbytes is not None and nbytes > MAX_ARRAY_BYTES:
                raise InputError(f"{path}: array {key!r} would take {nbytes / 2**30:.1f} GiB "
                                 f"(limit {MAX_ARRAY_BYTES / 2**30:.0f} GiB)")
            try:
                a = z[key]
            except ValueError as e:  # object arrays need pickle: refuse
                if "pickle" in str(e).lower():
                    raise InputError(f"{path}: refusing an npz with pickled objects ({e})") from None
                raise
    return check_array(a, path, key, labels=labels)


def images_to_float(x: np.ndarray, name: str = "images") -> torch.Tensor:
    """uint8 or float [0,1] arrays, NHWC/NCHW/NHW (or a single HW/HWC image) -> float NCHW [0,1]."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf" or x.size == 0:
        raise InputError(f"{name}: expected a non-empty numeric array, got dtype {x.dtype} with {x.size} values")
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype.kind == "b":
        x = x.astype(np.uint8) * 255
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
        x = x[None]  # one HWC image
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(f"{name}: expected 2-4 dimensions (N,H,W[,C] or N,C,H,W), got shape {x.shape}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = np.transpose(x, (0, 3, 1, 2))  # NHWC -> NCHW
    if x.shape[1] == 4:
        x = x[:, :3]  # drop alpha
    if x.dtype == np.uint8:
        return to_float_nchw(torch.from_numpy(np.ascontiguousarray(x)))
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise InputError(f"{name}: integer images must be in 0..255")
        return torch.from_numpy(np.ascontiguousarray(x, np.float32) / 255.0)
    x = np.ascontiguousarray(x, np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{name}: the images contain NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise InputError(f"{name}: float images must be in [0, 1] (found [{x.min():.3g}, {x.max():.3g}])")
    return torch.from_numpy(x)


def read_image(path: Path, size: tuple[int, int] | None = None, mode: str | None = None) -> np.ndarray:
    """One image as uint8 HWC (Pillow), optionally converted to ``mode`` and resized.

    Images over :data:`~trojanscope.data._safe.MAX_IMAGE_PIXELS` pixels are refused from their
    header, before decoding; every decoder failure is an :class:`InputError`.
    """
    a = decode_image(Path(path), mode, size)
    return a[:, :, None] if a.ndim == 2 else a


def load_images(path: str | Path, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Suspect inputs: an ``.npz`` with an ``x`` array, an image file, or a folder of images.

    Returns (float NCHW [0,1] tensor, names in order). Folder images are sorted by name and must
    share a size unless ``size`` is given.
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"no such file or folder: {path}")
    protect_input(path)
    with reading(path, "the inputs"):
        return _load_images(path, size)


def _load_images(path: Path, size: tuple[int, int] | None) -> tuple[torch.Tensor, list[str]]:
    if path.is_file() and path.suffix == ".npz":
        x = images_to_float(read_npz_array(path, ("x", "arr_0")), str(path))
        return x, [f"{path.name}[{i}]" for i in range(len(x))]
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataNotFoundError(f"{path}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    first = read_image(files[0], size)
    mode = "L" if first.shape[2] == 1 else "RGB"
    arrs = [first] + [read_image(p, size or first.shape[:2], mode) for p in files[1:]]
    return images_to_float(np.stack(arrs)), [str(p.relative_to(path) if path.is_dir() else p.name) for p in files]


@register("dataset", "npz")
def load_npz(split: str = "train", root: object = None, **_: object) -> ImageData:
    """An ``.npz`` with ``x`` (images, uint8 or float [0,1], NHWC or NCHW) and ``y`` (labels);
    or ``x_train``/``y_train`` and ``x_test``/``y_test`` for splits. ``root`` is the file path."""
    if root is None:
        raise InputError("npz data needs a file: use --data npz:PATH")
    path = Path(str(root))
    keys_x = (f"x_{split}", "x") if split in ("train", "test") else ("x",)
    keys_y = (f"y_{split}", "y") if split in ("train", "test") else ("y",)
    x = images_to_float(read_npz_array(path, keys_x), str(path))
    y = read_npz_array(path, keys_y, labels=True)
    if len(y) != len(x):
        raise InputError(f"{path}: {len(x)} images but {len(y)} labels")
    k = int(y.max()) + 1 if len(y) else 0
    declared = _declared_classes(path)
    if declared is not None:
        if k > declared:
            raise InputError(f"{path}: a label is {k - 1} but the file declares num_classes={declared}")
        k = declared
    return ImageData(x, torch.from_numpy(y.astype(np.int64)), max(k, 2), name=path.stem)


def _declared_classes(path: Path) -> int | None:
    """The optional ``num_classes`` entry of an npz (labels are class indices of a model with that
    many outputs, e.g. 10 of ImageNet's 1000 classes)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "num_classes" not in z.files:
                return None
            v = z["num_classes"]
    except Exception as e:
        raise InputError(f"{path}: cannot read its num_classes entry ({e})") from None
    if v.size != 1 or not np.issubdtype(v.dtype, np.integer) or not 2 <= int(v.reshape(-1)[0]) <= 100_000:
        raise InputError(f"{path}: num_classes should be one integer in 2..100000, got {v.reshape(-1)[:3]}")
    return int(v.reshape(-1)[0])


@register("dataset", "folder")
def load_folder(split: str = "train", root: object = None, size: int | None = None, **_: object) -> ImageData:
    """One sub-folder per class (sorted names = class indices): ``root/<class>/*.png``.

    When ``root`` has ``train/`` and ``test/`` sub-folders, ``split`` picks one.
    """
    if root is None:
        raise InputError("folder data needs a path: use --data folder:PATH")
    base = Path(str(root))
    if (base / split).is_dir():
        base = base / split
    if not base.is_dir():
        raise DataNotFoundError(f"no such folder: {base}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataNotFoundError(f"{base}: expected one sub-folder per class with images inside")
    xs, ys = [], []
    hw = (size, size) if size else None
    for i, c in enumerate(classes):
        files = sorted(p for p in (base / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in files:
            a = read_image(p, hw)
            hw = hw or a.shape[:2]
            xs.append(a)
            ys.append(i)
    if not xs:
        raise DataNotFoundError(f"{base}: the class folders contain no images")
    chans = {a.shape[2] for a in xs}
    if len(chans) > 1:  # mixed grey/colour: make all RGB
        xs = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in xs]
    return ImageData(images_to_float(np.stack(xs)), torch.tensor(ys), len(classes), name=base.name,
                     class_names=classes)
