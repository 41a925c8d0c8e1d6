"""Model files: load what a user brings, save what trojanscope trains (DESIGN.md, "Model files").

| suffix | content | loaded with |
|---|---|---|
| ``.safetensors`` + ``.json`` sidecar | weights + architecture name, classes, shape, mean/std | registry |
| ``.pt2`` | ``torch.export`` program (normalisation inside) | ``torch.export.load(p).module()`` |
| ``.pt`` | TorchScript (normalisation inside) | ``torch.jit.load`` |
| ``.pt`` / ``.pth`` state dict | ``torch.save(model.state_dict())`` | ``torch.load(weights_only=True)`` + ``module=`` or ``arch=`` |
| ``.onnx`` | ONNX graph (normalisation inside) | onnxruntime, forward only |

Every format may have a JSON sidecar (:func:`sidecar_path`) (``save_model`` writes one for each); a loaded
model is a :class:`~trojanscope.models.wrap.WrappedModel` taking [0, 1] images. Nothing here
unpickles code: state dicts are read with ``weights_only=True`` always.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import io
import json
import logging
import sys
import warnings
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._registry import get
from ..errors import InputError, ModelFileError, TrojanscopeError
from ..utils import atomic_path, atomic_write_json, versions
from .wrap import Normalize, WrappedModel, unwrap, wrap_model

SIDECAR_FORMAT = "trojanscope-model"
SIDECAR_VERSION = 1
SUFFIXES = (".safetensors", ".pt2", ".pt", ".pth", ".onnx")
_CARRIED = ("class_names", "dataset", "attack", "training")


def sidecar_path(path: str | Path) -> Path:
    """``model.safetensors`` -> ``model.json``; other formats ``model.pt2`` -> ``model.pt2.json``.

    (So that ``model.pt2`` and ``model.onnx`` side by side keep their own sidecars.)
    """
    path = Path(path)
    return path.with_suffix(".json") if path.suffix.lower() == ".safetensors" else path.with_name(path.name + ".json")


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
    """
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
    inside = fmt in ("export", "torchscript", "onnx")
    if fmt == "safetensors":
        if arch is None or not _is_registered(arch):
            raise InputError(
                "a .safetensors file is rebuilt from the architecture registry, but this model has no "
                "registered architecture name (build it with create_model(...)); save it as .pt2 instead"
            )
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"format": SIDECAR_FORMAT, "arch": arch})
    elif fmt == "state_dict":
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    else:
        if in_shape is None:
            raise InputError(f"saving as {fmt} needs the input shape: pass in_shape=(C, H, W)")
        with warnings.catch_warnings():  # deep-copying a torch.export module warns (torch 2.13)
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = _Exportable(copy.deepcopy(net), mean, std).eval()
        example = torch.rand(2, *in_shape, generator=torch.Generator().manual_seed(0)).to(
            next((p.device for p in wrapped.parameters()), torch.device("cpu")))
        with atomic_path(path) as tmp:
            _export(wrapped, example, tmp, fmt)
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


class _Exportable(nn.Module):
    """Normalisation + network in one plain module, so exported files take [0, 1] input."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.norm = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


def _export(module: nn.Module, example: torch.Tensor, tmp: Path, fmt: str) -> None:
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if fmt == "export":
                batch = torch.export.Dim("batch", min=1)
                ep = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
                torch.export.save(ep, str(tmp))
            elif fmt == "torchscript":
                traced = torch.jit.trace(module, example, check_trace=False)
                torch.jit.save(traced, str(tmp))
            elif fmt == "onnx":
                _export_onnx(module, example, tmp)
            else:
                raise InputError(f"unknown model format {fmt!r}")
    except TrojanscopeError:
        raise
    except Exception as e:
        raise ModelFileError(f"could not save the model as {fmt}: {type(e).__name__}: {_first_line(e)}") from e


def _export_onnx(module: nn.Module, example: torch.Tensor, tmp: Path) -> None:
    names = {"input_names": ["input"], "output_names": ["logits"]}
    try:  # the TorchScript-based exporter: fast and dependency-free
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
    except Exception:  # the torch.export-based exporter (onnxscript)
        torch.onnx.export(module, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **names)


# --------------------------------------------------------------------------------------------
# loading


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
        device: where the model goes (ONNX always runs on CPU).
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
    fmt = _format_of(path)
    side = _read_sidecar(path, required=(fmt == "safetensors" and arch is None and module is None))
    in_shape = tuple(in_shape) if in_shape else (tuple(side["in_shape"]) if side.get("in_shape") else None)
    num_classes = num_classes or side.get("num_classes")
    mean = std = None
    if normalize is not None:
        mean, std = normalize
    elif side.get("mean") is not None and not side.get("normalization_inside", False):
        mean, std = side["mean"], side.get("std")
    forward_only = False
    name = arch or side.get("arch")

    if fmt == "pt":
        fmt = _classify_torch_file(path)
    if fmt == "safetensors":
        net = _build(path, module, name, num_classes, in_shape, module_kwargs)
        _load_state(net, _read_safetensors(path), path, side)
    elif fmt == "state_dict":
        state = _read_state_dict(path)
        if module is None and name is None:
            raise ModelFileError(
                f"{path.name} holds only weights (a state dict); say which network they belong to: "
                "--module path/to/module.py:ClassName, or --arch NAME for a built-in architecture"
            )
        net = _build(path, module, name, num_classes, in_shape, module_kwargs)
        _load_state(net, state, path, side)
    elif fmt == "export":
        net = _guard(path, "a torch.export (.pt2) program", lambda: torch.export.load(str(path)).module())
        if in_shape is None:
            in_shape = _export_in_shape(net)
        name = name if side else "torch.export"
    elif fmt == "torchscript":
        net = _guard(path, "a TorchScript file", lambda: torch.jit.load(str(path), map_location="cpu"))
        name = name if side else "torchscript"
    elif fmt == "onnx":
        net = _OnnxModule(path)
        in_shape = in_shape or net.in_shape
        forward_only = True
        name = name if side else "onnx"
    else:  # pragma: no cover - _format_of/_classify only return the above
        raise ModelFileError(f"unknown format of {path}")
    if module is not None:
        name = f"module:{module.rsplit(':', 1)[-1]}"
    if not forward_only:
        net = net.to(device)
    metadata = dict(side)
    metadata.setdefault("file", path.name)
    try:
        wrapped = wrap_model(net, mean=mean, std=std, num_classes=num_classes, in_shape=in_shape, arch=name,
                             metadata=metadata, forward_only=forward_only,
                             detect_probabilities=detect_probabilities)
    except InputError as e:
        raise ModelFileError(f"{path.name}: {e}") from e
    wrapped.eval()
    return wrapped


def _format_of(path: Path, for_saving: bool = False) -> str:
    suffix = path.suffix.lower()
    fmt = {".safetensors": "safetensors", ".pt2": "export", ".pt": "pt", ".pth": "state_dict",
           ".onnx": "onnx"}.get(suffix)
    if for_saving and fmt == "pt":
        return "torchscript"
    if fmt == "state_dict" and not for_saving:
        return "pt"  # a .pth may be TorchScript too: look inside
    if fmt is None:
        hint = " (a Keras file: convert it to ONNX first)" if suffix in (".h5", ".keras") else ""
        raise (InputError if for_saving else ModelFileError)(
            f"unknown model file type {suffix or '(no suffix)'!r} of {path.name}{hint}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    return fmt


def _read_sidecar(path: Path, required: bool) -> dict[str, Any]:
    candidates = [sidecar_path(path), path.with_name(path.name + ".json"), path.with_suffix(".json")]
    side_path = next((c for c in dict.fromkeys(candidates) if c.is_file()), candidates[0])
    if not side_path.exists():
        if required:
            raise ModelFileError(
                f"{path.name} needs its sidecar {side_path.name} (architecture, classes, input shape); "
                "it is missing. Pass --arch NAME (and --normalize) to load the weights anyway"
            )
        return {}
    try:
        side = json.loads(side_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"sidecar {side_path} is not valid JSON: {_first_line(e)}") from e
    if not isinstance(side, dict):
        raise ModelFileError(f"sidecar {side_path} should hold a JSON object")
    if side.get("file") not in (None, path.name) and _belongs_elsewhere(side, path):
        if required:
            raise ModelFileError(f"sidecar {side_path.name} describes {side['file']}, not {path.name}")
        return {}  # it belongs to a sibling file of another format
    if side.get("format") not in (None, SIDECAR_FORMAT) or int(side.get("format_version", 1)) > SIDECAR_VERSION:
        raise ModelFileError(f"sidecar {side_path.name} has an unsupported format "
                             f"{side.get('format')!r} version {side.get('format_version')!r}")
    for key in ("in_shape", "mean", "std"):
        v = side.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(t, (int, float)) for t in v)):
            raise ModelFileError(f"sidecar {side_path.name}: {key!r} should be a list of numbers, got {v!r}")
    if side.get("in_shape") is not None and len(side["in_shape"]) != 3:
        raise ModelFileError(f"sidecar {side_path.name}: in_shape should be [C, H, W], got {side['in_shape']}")
    return side


def _belongs_elsewhere(side: dict[str, Any], path: Path) -> bool:
    """A sidecar naming another file describes that file when it exists or has another format;
    otherwise the pair was renamed, which is fine."""
    if (path.parent / str(side["file"])).exists():
        return True
    own = {".safetensors": ("safetensors",), ".pt2": ("export",), ".onnx": ("onnx",),
           ".pt": ("torchscript", "state_dict", "export"), ".pth": ("torchscript", "state_dict", "export")}
    fmt = side.get("file_format")
    return fmt is not None and fmt not in own.get(path.suffix.lower(), ())


def _classify_torch_file(path: Path) -> str:
    """TorchScript, torch.export or torch.save archive, decided from the zip member names."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # a legacy (pre-1.6) torch.save pickle stream
            return "state_dict"
        raise ModelFileError(f"{path.name} is not a PyTorch file (not a zip archive): corrupt or truncated?")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelFileError(f"{path.name} is a corrupt zip archive: {_first_line(e)}") from e
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        return "export"
    return "state_dict"


def _guard(path: Path, what: str, fn):
    if what != "a safetensors file" and not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path.name} could not be read as {what}: not a zip archive (corrupt or "
                             "truncated?)")
    quiet = logging.getLogger("torch.export")  # it logs a traceback before raising
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception as e:
        raise ModelFileError(f"{path.name} could not be read as {what} (corrupt or truncated?): "
                             f"{type(e).__name__}: {_first_line(e)}") from e
    finally:
        quiet.setLevel(level)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return _guard(path, "a safetensors file", lambda: load_file(str(path)))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "Unpickl" in type(e).__name__:
            raise ModelFileError(
                f"{path.name} holds pickled Python objects (e.g. a whole nn.Module saved with "
                "torch.save(model)), and loading it could run arbitrary code; trojanscope only reads "
                "weights (weights_only=True). Re-save it with torch.save(model.state_dict()) and pass "
                "--module path/to/module.py:ClassName, or export it with torch.export / TorchScript"
            ) from e
        raise ModelFileError(f"{path.name} could not be read as a PyTorch state dict (corrupt or "
                             f"truncated?): {type(e).__name__}: {_first_line(e)}") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path.name} does not hold a state dict (a dict of named tensors), "
                             f"but {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _is_registered(arch: str) -> bool:
    try:
        get("arch", arch)
    except InputError:
        return False
    return True


def _build(path: Path, module: str | None, arch: str | None, num_classes: int | None,
           in_shape: tuple[int, ...] | None, module_kwargs: dict[str, Any] | None) -> nn.Module:
    if module is not None:
        cls = _import_class(module)
        try:
            net = cls(**(module_kwargs or {}))
        except Exception as e:
            raise ModelFileError(f"could not instantiate {module}: {type(e).__name__}: {_first_line(e)}") from e
        if not isinstance(net, nn.Module):
            raise ModelFileError(f"{module} did not return a torch.nn.Module but {type(net).__name__}")
        return net
    if arch is None:
        raise ModelFileError(f"no architecture for {path.name}: pass --arch NAME or --module FILE.py:Class")
    if not _is_registered(arch):
        raise ModelFileError(f"{path.name}: architecture {arch!r} is not registered "
                             "(trojanscope.available('arch') lists them)")
    if num_classes is None or in_shape is None:
        raise ModelFileError(f"{path.name}: the number of classes and input shape are unknown; "
                             "they come from the sidecar, or pass num_classes= and in_shape=")
    from . import create_model

    try:
        return create_model(arch, int(num_classes), tuple(int(v) for v in in_shape))
    except InputError as e:
        raise ModelFileError(f"{path.name}: {e}") from e


def _import_class(spec: str):
    if ":" not in spec:
        raise ModelFileError(f"--module must look like path/to/module.py:ClassName, got {spec!r}")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py") or Path(where).exists():
            file = Path(where)
            if not file.is_file():
                raise ModelFileError(f"module file {file} does not exist")
            modname = f"_trojanscope_user_{abs(hash(str(file.resolve())))}"
            s = importlib.util.spec_from_file_location(modname, file)
            if s is None or s.loader is None:
                raise ModelFileError(f"cannot import {file} as a Python module")
            mod = importlib.util.module_from_spec(s)
            sys.modules[modname] = mod
            s.loader.exec_module(mod)
        else:
            mod = importlib.import_module(where)
    except TrojanscopeError:
        raise
    except Exception as e:
        raise ModelFileError(f"importing {where} failed: {type(e).__name__}: {_first_line(e)}") from e
    if not hasattr(mod, name):
        raise ModelFileError(f"{where} has no {name!r}")
    return getattr(mod, name)


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], path: Path, side: dict[str, Any]) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}")
        if bad:
            k = bad[0]
            parts.append(f"shape of {k} is {tuple(state[k].shape)} in the file but {tuple(own[k].shape)} "
                         "in the network")
        src = f"the sidecar's architecture {side.get('arch')!r}" if side.get("arch") else "the given network"
        raise ModelFileError(f"the weights in {path.name} do not match {src}: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)


def _export_in_shape(net: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) of the first placeholder of an exported graph, when static."""
    graph = getattr(net, "graph", None)
    for node in getattr(graph, "nodes", ()):
        if node.op == "placeholder":
            val = node.meta.get("val")
            shape = getattr(val, "shape", None)
            if shape is not None and len(shape) == 4:
                with contextlib.suppress(TypeError, ValueError):
                    return tuple(int(s) for s in shape[1:])  # type: ignore[return-value]
    return None


class _OnnxModule(nn.Module):
    """Runs an ONNX graph with onnxruntime on CPU; forward only (no gradients)."""

    forward_only = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is in the dev extra
            raise ModelFileError("reading .onnx files needs onnxruntime: pip install 'trojanscope[onnx]'") from e
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelFileError(f"{path.name} could not be read as an ONNX model (corrupt or truncated?): "
                                 f"{_first_line(e)}") from e
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"{path.name} has {len(inputs)} inputs; trojanscope needs one image input")
        self._input = inputs[0].name
        dims = inputs[0].shape
        self.in_shape = (tuple(int(d) for d in dims[1:]) if len(dims) == 4 and all(isinstance(d, int)
                         for d in dims[1:]) else None)

    def __reduce__(self):
        # an onnxruntime session cannot be copied or pickled: reopen the file instead
        return (type(self), (self._path,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._session.run(None, {self._input: arr})[0]
        return torch.from_numpy(out).to(x.device)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
