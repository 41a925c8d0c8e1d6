"""Reading untrusted data files: bounded decompression, an explicit image pixel limit, and every
reader failure turned into an :class:`InputError` naming the file (issue 12)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, TrojanscopeError

#: largest image (width x height) decoded; above it a file is refused before decoding
#: (a 100 KB PNG can declare 20000 x 20000 pixels: 400 MB, or 1.2 GB in RGB)
MAX_IMAGE_PIXELS = 40_000_000
#: most bytes a compressed data file (.gz, .xz) may expand to
MAX_DECOMPRESSED_BYTES = 2 << 30
#: largest array read from an .npz
MAX_ARRAY_BYTES = 4 << 30

def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


@contextlib.contextmanager
def reading(path: str | Path, what: str, prefix: str | None = None) -> Iterator[None]:
    """Turn any low-level failure while reading ``path`` into one :class:`InputError`."""
    try:
        yield
    except TrojanscopeError:
        raise
    except Exception as e:  # zlib/lzma/struct/zipfile/numpy errors, numpy's .npy header
        # parser's tokenize.TokenError, ...: hostile data never ends in a traceback
        raise InputError(f"{path}: {prefix or 'cannot read ' + what} ({type(e).__name__}: "
                         f"{first_line(e)})") from None


def read_maybe_compressed(path: Path, what: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """The bytes of ``path``, gunzipped / unxz'd by suffix, refusing more than ``limit`` bytes."""
    opener: Any = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix.lower(), open)
    with reading(path, what), opener(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise InputError(f"{path}: expands to more than {limit / 2**30:.1f} GiB: a decompression bomb?")
    return raw


def open_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS):
    """``PIL.Image.open`` with the pixel limit checked from the header, before any decoding."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:
            raise InputError(f"{path}: the image is larger than {max_pixels} pixels ({first_line(e)})") from None
    w, h = im.size
    if w * h > max_pixels or w < 1 or h < 1:
        im.close()
        raise InputError(f"{path}: the image is {w} x {h} = {w * h} pixels; the limit is {max_pixels} "
                         "(a decompression bomb?)")
    return im


def decode_image(path: Path, convert: str | None, size: tuple[int, int] | None = None,
                 crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Open, check, convert (``mode``), crop and resize one image to uint8 HWC (or HW)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(path) as im:
                mode = convert or ("L" if im.mode in ("L", "1", "I;16", "I") else "RGB")
                im2 = im.convert(mode)
                if crop is not None:
                    im2 = im2.crop(crop)
                if size is not None and im2.size != (size[1], size[0]):
                    im2 = im2.resize((size[1], size[0]), Image.BILINEAR)
                return np.asarray(im2, dtype=np.uint8)
    except TrojanscopeError:
        raise
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{path}: not a readable image ({first_line(e)})") from None
    except Exception as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__}: {first_line(e)})") from None


def check_array(a: np.ndarray, path: str | Path, key: str, *, labels: bool = False) -> np.ndarray:
    """Numeric, non-empty, native byte order; labels 1-D integers in 0..100000."""
    if a.dtype.kind not in "biuf":
        raise InputError(f"{path}: array {key!r} has dtype {a.dtype} ({_kind(a.dtype)}); expected "
                         + ("integer class labels" if labels else "numbers (uint8 or float images)"))
    if a.size == 0:
        raise InputError(f"{path}: array {key!r} is empty")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if labels:
        if a.dtype.kind not in "iu":
            raise InputError(f"{path}: labels {key!r} must be integers, got {a.dtype}")
        if a.ndim != 1:
            raise InputError(f"{path}: labels {key!r} must be 1-D, got shape {a.shape}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= 100_000:
            raise InputError(f"{path}: labels {key!r} must be class indices in 0..99999, found {lo}..{hi}")
    return a


def _kind(dt: np.dtype) -> str:
    return {"c": "complex", "U": "text", "S": "bytes", "O": "Python objects", "M": "datetime",
            "m": "timedelta", "V": "raw records"}.get(dt.kind, dt.kind)


def npz_member_nbytes(path: Path, key: str) -> int | None:
    """Bytes the array ``key`` of an .npz will take, from its .npy header (nothing decoded)."""
    with reading(path, "the .npz file"), zipfile.ZipFile(path) as z:
        name = key + ".npy"
        if name not in z.namelist():
            return None
        with z.open(name) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    n = 1
    for s in shape:
        n *= int(s)
    return n * max(1, np.dtype(dtype).itemsize)
