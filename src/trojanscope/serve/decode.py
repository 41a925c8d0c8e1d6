"""Request bodies -> float32 images [N, C, H, W] in [0, 1], or a clear client error.

Every body is hostile until decoded: sizes are checked before anything is decompressed or
allocated, pickles are never loaded, and every failure is a :class:`BadRequest` with an HTTP
status (400 malformed, 413 too large, 415 unknown type) and a message meant for the client.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from ..data.files import images_to_float
from ..errors import InputError


class BadRequest(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    in_shape: tuple[int, int, int]
    max_batch: int = 64
    max_pixels: int = 4096 * 4096  # of one encoded image, before it is resized

    @property
    def max_array_bytes(self) -> int:
        # float64 is the widest dtype an honest client sends
        c, h, w = self.in_shape
        return self.max_batch * c * h * w * 8 + (1 << 16)


NPZ_TYPES = ("application/x-npz", "application/npz", "application/octet-stream")
JSON_TYPES = ("application/json",)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")


def _npz(body: bytes, lim: Limits) -> np.ndarray:
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            infos = {i.filename: i for i in z.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise BadRequest(400, f"the body is not a valid .npz archive ({e})") from None
    member = infos.get("x.npy")
    if member is None:
        raise BadRequest(400, f"the .npz must hold an array named 'x' (found {sorted(infos)[:10]})")
    if member.file_size > lim.max_array_bytes:  # checked before decompressing: no zip bombs
        raise BadRequest(413, f"array 'x' is too large ({member.file_size} bytes uncompressed; "
                              f"at most {lim.max_batch} images of {list(lim.in_shape)})")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            return z["x"]
    except ValueError as e:
        raise BadRequest(400, f"array 'x' cannot be read without pickle or is malformed ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise BadRequest(400, f"the body is not a valid .npz archive ({e})") from None


def _json(body: bytes) -> np.ndarray:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(400, f"the body is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(doc, dict) or "x" not in doc:
        raise BadRequest(400, 'JSON bodies look like {"x": [[...]]} (nested lists of pixel values)')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # ragged lists warn (then fail) in numpy
            x = np.asarray(doc["x"])
    except (ValueError, TypeError, RecursionError, Warning, OverflowError) as e:
        raise BadRequest(400, f"'x' must be a rectangular array of numbers ({str(e)[:120]})") from None
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise BadRequest(400, f"'x' must hold numbers, got {x.dtype}")
    return x


def _image(body: bytes, lim: Limits) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = lim.in_shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as im:
                if im.width * im.height > lim.max_pixels:
                    raise BadRequest(413, f"the image has {im.width}x{im.height} pixels; at most "
                                          f"{lim.max_pixels} are accepted")
                im = im.convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadRequest(400, f"the body is not a readable image ({str(e)[:120]})") from None
    return a[None, :, :, None] if a.ndim == 2 else a[None]


def decode(body: bytes, content_type: str, lim: Limits) -> np.ndarray:
    """Decode one request body into float32 [N, C, H, W] in [0, 1] of the model's shape."""
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadRequest(400, "the request body is empty")
    if kind in NPZ_TYPES:
        raw = _npz(body, lim)
    elif kind in JSON_TYPES:
        raw = _json(body)
    elif kind in IMAGE_TYPES:
        raw = _image(body, lim)
    else:
        raise BadRequest(415, f"unsupported Content-Type {kind or '(none)'!r}; send "
                              f"application/x-npz, application/json, image/png or image/jpeg")
    if raw.ndim >= 3 and raw.shape[0] > lim.max_batch:
        raise BadRequest(413, f"{raw.shape[0]} images in one request; at most {lim.max_batch}")
    try:
        x = images_to_float(raw, "x")
    except InputError as e:
        raise BadRequest(400, str(e)) from None
    if x.shape[0] > lim.max_batch:
        raise BadRequest(413, f"{x.shape[0]} images in one request; at most {lim.max_batch}")
    if x.shape[1] == 1 and lim.in_shape[0] == 3:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[1:]) != lim.in_shape:
        raise BadRequest(400, f"images must be {list(lim.in_shape)} (C, H, W) or the same as HWC; "
                              f"got {list(x.shape[1:])}")
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)
