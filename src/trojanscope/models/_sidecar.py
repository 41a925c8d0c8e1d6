"""The JSON sidecar next to a model file, validated like any other untrusted input (issue 12).

Types, ranges and cross-checks of every key trojanscope reads; a bad sidecar is one
:class:`ModelFileError` naming the key, never a traceback or a 160 GB allocation. Keys trojanscope
does not know are kept in the model's ``metadata`` (so newer files still load) but never
interpreted; their names are listed under ``metadata["sidecar_unknown_keys"]``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

SIDECAR_FORMAT = "trojanscope-model"
SIDECAR_VERSION = 1
#: classes a model may have
MIN_CLASSES, MAX_CLASSES = 2, 100_000
#: one image may have at most this many values (C*H*W); 3x2048x2048 fits
MAX_INPUT_VALUES = 1 << 24
#: largest side and channel count of an input
MAX_SIDE, MAX_CHANNELS = 16_384, 64
#: largest sidecar file read
MAX_SIDECAR_BYTES = 16 << 20
FILE_FORMATS = ("safetensors", "export", "torchscript", "state_dict", "onnx")

# keys trojanscope writes or reads; everything else is "unknown"
KNOWN_KEYS = {
    "format", "format_version", "file", "file_format", "arch", "num_classes", "in_shape", "mean", "std",
    "normalization_inside", "created", "versions", "class_names", "dataset", "attack", "training",
    "metrics", "derived_from", "zoo", "mitigation", "repaired_from", "outputs",
}


def read_sidecar_file(side_path: Path) -> dict[str, Any]:
    """Parse a sidecar file (size-bounded) into a dict; raises ModelFileError."""
    try:
        size = side_path.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise ModelFileError(f"sidecar {side_path.name} is {size} bytes (limit {MAX_SIDECAR_BYTES})")
        side = json.loads(side_path.read_bytes().decode("utf-8"))
    except ModelFileError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"sidecar {side_path} is not valid JSON: {first}") from e
    if not isinstance(side, dict):
        raise ModelFileError(f"sidecar {side_path} should hold a JSON object, not {type(side).__name__}")
    return side


def validate_sidecar(side: dict[str, Any], name: str) -> dict[str, Any]:
    """Check every key trojanscope interprets; returns the sidecar (unknown keys listed).

    Args:
        side: the parsed JSON object.
        name: the sidecar's file name, for messages.

    Raises:
        ModelFileError: ``sidecar NAME: KEY ...`` saying what is wrong and what is expected.
    """
    def bad(key: str, why: str) -> ModelFileError:
        return ModelFileError(f"sidecar {name}: {key!r} {why}")

    fmt = side.get("format")
    if fmt not in (None, SIDECAR_FORMAT):
        raise bad("format", f"is {_show(fmt)}, expected {SIDECAR_FORMAT!r}")
    ver = side.get("format_version", 1)
    if not _is_int(ver) or not 1 <= ver <= SIDECAR_VERSION:
        raise bad("format_version", f"is {_show(ver)}; this trojanscope reads versions 1..{SIDECAR_VERSION}")
    for key in ("file", "arch", "created", "dataset", "derived_from", "repaired_from"):
        v = side.get(key)
        if v is not None and not (isinstance(v, str) and len(v) <= 4096):
            raise bad(key, f"should be a string, got {_show(v)}")
    ff = side.get("file_format")
    if ff is not None and ff not in FILE_FORMATS:
        raise bad("file_format", f"is {_show(ff)}, expected one of {', '.join(FILE_FORMATS)}")
    inside = side.get("normalization_inside")
    if inside is not None and not isinstance(inside, bool):
        raise bad("normalization_inside", f"should be true or false, got {_show(inside)}")

    k = side.get("num_classes")
    if k is not None:
        if not _is_int(k):
            raise bad("num_classes", f"should be an integer, got {_show(k)}")
        if not MIN_CLASSES <= k <= MAX_CLASSES:
            raise bad("num_classes", f"is {k}, outside {MIN_CLASSES}..{MAX_CLASSES}")

    shape = side.get("in_shape")
    if shape is not None:
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) for v in shape)):
            raise bad("in_shape", f"should be three integers [C, H, W], got {_show(shape)}")
        c, h, w = shape
        if min(shape) < 1:
            raise bad("in_shape", f"should be positive, got {shape}")
        if c > MAX_CHANNELS or max(h, w) > MAX_SIDE or c * h * w > MAX_INPUT_VALUES:
            raise bad("in_shape", f"{shape} is too large (at most {MAX_CHANNELS} channels, sides of "
                                  f"{MAX_SIDE} and {MAX_INPUT_VALUES} values per image)")

    mean, std = side.get("mean"), side.get("std")
    for key, v in (("mean", mean), ("std", std)):
        if v is None:
            continue
        if not (isinstance(v, list) and 1 <= len(v) <= MAX_CHANNELS and all(_is_real(t) for t in v)):
            raise bad(key, f"should be a list of 1..{MAX_CHANNELS} finite numbers, got {_show(v)}")
    if (mean is None) != (std is None):
        raise bad("mean" if std is None else "std", "is given without its partner (mean and std go together)")
    if mean is not None and std is not None:
        if len(mean) != len(std):
            raise bad("std", f"has {len(std)} values but 'mean' has {len(mean)}")
        if any(s <= 0 for s in std):
            raise bad("std", f"must be positive, got {std}")
        if shape is not None and len(mean) not in (1, shape[0]):
            raise bad("mean", f"has {len(mean)} values but in_shape {shape} has {shape[0]} channels")

    names = side.get("class_names")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise bad("class_names", f"should be a list of strings, got {_show(names)}")
        if k is not None and len(names) != k:
            raise bad("class_names", f"has {len(names)} names but num_classes is {k}")
    for key in ("attack", "training", "metrics", "versions", "zoo", "mitigation"):
        v = side.get(key)
        if v is not None and not isinstance(v, dict):
            raise bad(key, f"should be a JSON object, got {_show(v)}")
    attack = side.get("attack")
    if isinstance(attack, dict):
        if attack.get("name") is not None and not isinstance(attack.get("name"), str):
            raise bad("attack", "name should be a string")
        t = attack.get("target")
        if t is not None and not (_is_int(t) and 0 <= t < (k or MAX_CLASSES)):
            raise bad("attack", f"target should be a class index, got {_show(t)}")
        src = attack.get("sources")
        if src is not None and not (isinstance(src, list) and all(_is_int(s) and 0 <= s < (k or MAX_CLASSES)
                                                                  for s in src)):
            raise bad("attack", f"sources should be a list of class indices, got {_show(src)}")
        if attack.get("params") is not None and not isinstance(attack.get("params"), dict):
            raise bad("attack", "params should be a JSON object")
    unknown = sorted(str(key) for key in side if key not in KNOWN_KEYS)
    if unknown:
        side = {**side, "sidecar_unknown_keys": unknown}
    return side


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
