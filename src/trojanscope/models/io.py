"""Model files: load what a user brings, save what trojanscope trains (DESIGN.md, "Model files").

| suffix | content | loaded with |
|---|---|---|
| ``.safetensors`` + ``.json`` sidecar | weights + architecture name, classes, shape, mean/std | registry |
| ``.pt2`` | ``torch.export`` program (normalisation inside) | ``torch.export.load(p).module()`` |
| ``.pt`` | TorchScript (normalisation inside) | ``torch.jit.load`` |
| ``.pt`` / ``.pth`` state dict | ``torch.save(model.state_dict())`` | ``torch.load(weights_only=True)`` + ``module=`` or ``arch=`` |
| ``.onnx`` | ONNX graph (normalisation inside) | onnxruntime, forward only |

Every format may have a JSON sidecar (:func:`sidecar_path`; ``save_model`` writes one); a loaded
model is a :class:`~trojanscope.models.wrap.WrappedModel` taking [0, 1] images. Nothing here
unpickles code: state dicts are read with ``weights_only=True`` always.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelFileError
from ..utils import atomic_path, atomic_write_json, protect_input, resolve_device, versions
from ._files import (
    _CARRIED,
    SUFFIXES,
    _classify_torch_file,
    _read_sidecar,
    sidecar_path,
)
from ._sidecar import SIDECAR_FORMAT, SIDECAR_VERSION
from .formats import LoadSpec, SaveSpec, format_named
from .wrap import WrappedModel, unwrap, wrap_model

__all__ = ["SIDECAR_FORMAT", "SIDECAR_VERSION", "SUFFIXES", "load_model", "save_model", "sidecar_path"]

# --------------------------------------------------------------------------------------------
# formats by suffix (the registry kind ``format``: models/formats/, one file per format)


def _format_of(path: Path, for_saving: bool = False) -> str:
    """The registered format of ``path`` by its suffix; ``"pt"`` when several formats share the
    suffix (``.pt``/``.pth``: TorchScript, state dict or torch.export) and the file must be read
    to tell them apart. Saving picks the format whose first suffix it is."""
    from .._registry import available, get

    suffix = path.suffix.lower()
    names = [n for n in available("format") if suffix in get("format", n).suffixes]
    if not names:
        hint = " (a Keras file: convert it to ONNX first)" if suffix in (".h5", ".keras") else ""
        raise (InputError if for_saving else ModelFileError)(
            f"unknown model file type {suffix or '(no suffix)'!r} of {path.name}{hint}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    if for_saving:
        return next((n for n in names if get("format", n).suffixes[0] == suffix), names[0])
    return names[0] if len(names) == 1 else "pt"


# --------------------------------------------------------------------------------------------
# saving


def save_model(model: nn.Module, path: str | Path, *, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, metadata: dict[str, Any] | None = None,
               format: str | None = None, in_shape: tuple[int, int, int] | None = None) -> Path:
    """Write ``model`` to ``path`` (format from the suffix) and a ``.json`` sidecar next to it.

    Args:
        model: a registry model (``create_model``), or a loaded :class:`WrappedModel`.
        path: ``.safetensors``, ``.pt2``, ``.pt`` (TorchScript), ``.pth`` (state dict) or ``.onnx``.
        mean, std: normalisation the network expects (defaults to the wrapper's). ``.pt2``,
            ``.pt`` and ``.onnx`` files contain it, so they take [0, 1] input; ``.safetensors`` /
            ``.pth`` record it in the sidecar.
        metadata: extra JSON-able sidecar entries (``class_names``, ``metrics``, ``attack``, ...).
        format: "safetensors", "export", "torchscript", "state_dict" or "onnx" to override the
            suffix (e.g. a state dict saved as ``.pt``).
        in_shape: (C, H, W) when the model does not record it (needed to export).

    Returns:
        the path written.

    A model that is a runtime wrapper around a network (e.g. the input filter of a mitigation)
    may define ``saveable() -> (module, sidecar_entries)``: the module is saved and the entries
    go to the sidecar, so every format (safetensors too) can hold it and a loader can rebuild it.
    """
    if callable(getattr(model, "saveable", None)):
        model, entries = model.saveable()
        metadata = {**(metadata or {}), **entries}
    path = Path(path)
    fmt = format or _format_of(path, for_saving=True)
    net = unwrap(model)
    if getattr(model, "forward_only", False):
        raise InputError("a forward-only (ONNX) model cannot be saved to another format")
    if isinstance(model, WrappedModel) and model.normalize is not None and mean is None and std is None:
        mean = model.normalize.mean.flatten().tolist()
        std = model.normalize.std.flatten().tolist()
    if (mean is None) != (std is None):
        raise InputError("give both mean and std, or neither")
    in_shape = tuple(in_shape or getattr(model, "in_shape", None) or getattr(net, "in_shape", None) or ()) or None
    arch = getattr(net, "arch", None) or getattr(model, "arch", None)
    num_classes = getattr(model, "num_classes", None) or getattr(net, "num_classes", None)
    writer = format_named(fmt)
    if not writer.can_save:
        raise InputError(f"trojanscope does not write {fmt} files")
    inside = writer.normalization_inside
    with atomic_path(path) as tmp:
        writer.save(net, tmp, SaveSpec(arch=arch, in_shape=in_shape, mean=mean, std=std))
    side: dict[str, Any] = {}
    if isinstance(model, WrappedModel):
        # what stays true of a re-saved model; metrics are not carried (the caller gives new ones)
        side = {k: model.metadata[k] for k in _CARRIED if k in model.metadata}
        if model.metadata.get("file"):
            side["derived_from"] = model.metadata["file"]
    side.update(metadata or {})
    side.update({
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "file": path.name, "file_format": fmt,
        "arch": arch, "num_classes": num_classes, "in_shape": list(in_shape) if in_shape else None,
        "mean": list(mean) if mean is not None else None, "std": list(std) if std is not None else None,
        "normalization_inside": inside, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    })
    atomic_write_json(sidecar_path(path), side)
    return path


# --------------------------------------------------------------------------------------------
# loading


def check_finite_weights(net: nn.Module, name: str) -> None:
    """Refuse a network with NaN or infinite weights: every score it gave would be meaningless
    (``evaluate`` used to print a CTA of 10% for one)."""
    try:
        tensors = list(net.state_dict().items())
    except Exception:  # an ONNX session or an exotic module: its outputs are checked instead
        return
    for key, t in tensors:
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and not t.is_meta \
                and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise ModelFileError(f"{name}: weight {key!r} holds {n_bad} NaN or infinite value(s); "
                                 "such a model cannot be judged")


def load_model(path: str | Path, *, normalize: tuple[Sequence[float], Sequence[float]] | None = None,
               module: str | None = None, arch: str | None = None, num_classes: int | None = None,
               in_shape: tuple[int, int, int] | None = None, module_kwargs: dict[str, Any] | None = None,
               device: str | torch.device = "cpu", detect_probabilities: bool = True) -> WrappedModel:
    """Load a model file as a :class:`WrappedModel` taking [0, 1] images and returning logits.

    Args:
        path: ``.safetensors``, ``.pt2``, ``.pt``/``.pth`` (TorchScript or state dict) or ``.onnx``.
        normalize: (mean, std) the network expects; default: the sidecar's.
        module: ``path/to/module.py:ClassName`` (or ``package.module:ClassName``) whose instance
            receives a state dict file. Importing it runs the user's own code, by their choice;
            the weights are read with ``weights_only=True``.
        arch: registry architecture for a state dict (instead of ``module``) or a sidecar-less
            ``.safetensors`` file.
        num_classes, in_shape: override/complete the sidecar (in_shape is (C, H, W)).
        module_kwargs: keyword arguments of ``ClassName(...)``.
        device: where the model goes: "cpu", "cuda", "auto" (ONNX always runs on the CPU).
        detect_probabilities: wrap probability outputs with a log.

    Raises:
        ModelFileError: missing, empty, corrupt, truncated or untrusted file, unknown suffix,
            sidecar that does not match the weights.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {path} is empty (0 bytes)")
    protect_input(path)  # no output of this process may overwrite it (nor its sidecar)
    protect_input(sidecar_path(path))
    fmt = _format_of(path)
    side = _read_sidecar(path, required=(fmt == "safetensors" and arch is None and module is None))
    in_shape = tuple(in_shape) if in_shape else (tuple(side["in_shape"]) if side.get("in_shape") else None)
    num_classes = num_classes or side.get("num_classes")
    mean = std = None
    if normalize is not None:
        mean, std = normalize
    elif side.get("mean") is not None and not side.get("normalization_inside", False):
        mean, std = side["mean"], side.get("std")
    name = arch or side.get("arch")

    if fmt == "pt":
        fmt = _classify_torch_file(path)
    loaded = format_named(fmt).load(path, LoadSpec(side=side, arch=name, num_classes=num_classes,
                                                    in_shape=in_shape, module=module,
                                                    module_kwargs=module_kwargs))
    net, in_shape, name, forward_only = loaded.net, loaded.in_shape, loaded.name, loaded.forward_only
    if module is not None:
        name = f"module:{module.rsplit(':', 1)[-1]}"
    check_finite_weights(net, path.name)
    if not forward_only:
        net = net.to(resolve_device(device))
    metadata = dict(side)
    metadata.setdefault("file", path.name)
    if getattr(net, "frozen_train_modes", None):  # a .pt2 exported in training mode (formats/pt2.py)
        metadata["exported_in_training_mode"] = f"set to inference behaviour: {', '.join(net.frozen_train_modes)}"
    try:
        wrapped = wrap_model(net, mean=mean, std=std, num_classes=num_classes, in_shape=in_shape, arch=name,
                             metadata=metadata, forward_only=forward_only,
                             detect_probabilities=detect_probabilities)
    except InputError as e:
        raise ModelFileError(f"{path.name}: {e}") from e
    wrapped.eval()
    return wrapped
