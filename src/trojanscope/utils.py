"""Small shared helpers: seeding, devices, atomic writes, versions."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError


def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator seeded with ``seed`` (0 when None, so results stay reproducible)."""
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


def rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(0 if seed is None else int(seed))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` means CUDA when available; nothing requires a GPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _umask_mode() -> int:
    """0o666 minus the process umask: the mode an ordinary open() would give a new file
    (mkstemp creates 0600 files, which would make saved models private by accident)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block succeeds.

    For writers (torch.export.save, safetensors) that want a file name rather than bytes. The
    temporary file has the final file name, inside a private temporary folder: torch names the
    top folder of its zip archives after the file, so the bytes do not depend on a random name.
    """
    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    tmp = tmpdir / path.name
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with contextlib.suppress(OSError):
            os.rmdir(tmpdir)


# Files this process reads as inputs (model files, their sidecars, data files): no command may
# write over one of them ("mitigate M --out M" would destroy the model it repairs).
_INPUTS: set[str] = set()


def protect_input(path: str | Path) -> None:
    """Record ``path`` as an input of this process: :func:`check_writable` refuses it after."""
    with contextlib.suppress(OSError):
        _INPUTS.add(os.path.realpath(path))


def check_writable(path: str | Path) -> None:
    """Raise :class:`InputError` when ``path`` is (a link to) a file this process read as input."""
    if _INPUTS and os.path.realpath(path) in _INPUTS:
        raise InputError(f"refusing to write {path}: it is an input of this command (the output "
                         "would overwrite it); choose another output path")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_jsonable(o: Any) -> Any:
    """Recursively turn tensors/arrays/paths into JSON types (NaN/inf become None)."""
    if isinstance(o, dict):
        return {str(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, (torch.Tensor, np.ndarray)):
        return to_jsonable(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if np.isfinite(f) else None
    if isinstance(o, Path):
        return str(o)
    return o


def versions() -> dict[str, str]:
    """Versions recorded in every report, for reproducibility."""
    import scipy
    import sklearn

    from . import __version__

    return {
        "trojanscope": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
