"""Reading model files safely: sidecars, format detection, state dicts, user modules, ONNX.

The private half of :mod:`trojanscope.models.io`. Every failure becomes a :class:`ModelFileError`
with one clear line; nothing here unpickles code (state dicts: ``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._registry import get
from ..errors import InputError, ModelFileError, TrojanscopeError
from ._archive import is_zip
from ._sidecar import read_sidecar_file, validate_sidecar

SUFFIXES = (".safetensors", ".pt2", ".pt", ".pth", ".onnx")
_CARRIED = ("class_names", "dataset", "attack", "training")


def sidecar_path(path: str | Path) -> Path:
    """``model.safetensors`` -> ``model.json``; other formats ``model.pt2`` -> ``model.pt2.json``.

    (So that ``model.pt2`` and ``model.onnx`` side by side keep their own sidecars.)
    """
    path = Path(path)
    return path.with_suffix(".json") if path.suffix.lower() == ".safetensors" else path.with_name(path.name + ".json")


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
    side = read_sidecar_file(side_path)
    if side.get("file") not in (None, path.name) and _belongs_elsewhere(side, path):
        if required:
            raise ModelFileError(f"sidecar {side_path.name} describes {side['file']}, not {path.name}")
        return {}  # it belongs to a sibling file of another format
    return validate_sidecar(side, side_path.name)


def _belongs_elsewhere(side: dict[str, Any], path: Path) -> bool:
    """A sidecar naming another file describes that file when it exists or has another format;
    otherwise the pair was renamed, which is fine."""
    try:
        if (path.parent / str(side["file"])).exists():
            return True
    except (OSError, ValueError):  # a name too long or with a NUL: not a sibling
        return False
    own = {".safetensors": ("safetensors",), ".pt2": ("export",), ".onnx": ("onnx",),
           ".pt": ("torchscript", "state_dict", "export"), ".pth": ("torchscript", "state_dict", "export")}
    fmt = side.get("file_format")
    return fmt is not None and fmt not in own.get(path.suffix.lower(), ())


def _classify_torch_file(path: Path) -> str:
    """TorchScript, torch.export or torch.save archive, decided from the zip member names."""
    if not is_zip(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # a legacy (pre-1.6) torch.save pickle stream
            return "state_dict"
        raise ModelFileError(f"{path.name} is not a PyTorch file (not a zip archive): corrupt or truncated?")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception as e:  # BadZipFile, OSError, UnicodeDecodeError of a damaged name, ...
        raise ModelFileError(f"{path.name} is a corrupt zip archive: {_first_line(e)}") from e
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        return "export"
    return "state_dict"


def _guard(path: Path, what: str, fn):
    if what != "a safetensors file" and not is_zip(path):
        raise ModelFileError(f"{path.name} could not be read as {what}: not a zip archive (corrupt or "
                             "truncated?)")
    quiet = logging.getLogger("torch.export")  # it logs a traceback before raising
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ._archive import no_code_unpickling

            with no_code_unpickling():
                return fn()
    except TrojanscopeError:
        raise
    except Exception as e:
        raise ModelFileError(f"{path.name} could not be read as {what} (corrupt or truncated?): "
                             f"{type(e).__name__}: {_first_line(e)}") from e
    finally:
        quiet.setLevel(level)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return _guard(path, "a safetensors file", lambda: load_file(str(path)))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from ._archive import no_code_unpickling

    try:
        with no_code_unpickling():
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
        # built on the meta device: no memory is spent before the file's weights are known to fit
        # (a sidecar asking for a huge network cannot allocate it)
        with torch.device("meta"):
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
    on_meta = any(t.is_meta for t in net.state_dict().values())
    net.load_state_dict(state, strict=True, assign=on_meta)
    if any(t.is_meta for t in list(net.parameters()) + list(net.buffers())):  # non-persistent buffers
        raise ModelFileError(f"{path.name}: the network has tensors that the weights file does not hold")


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
        try:  # the graph's metadata is the file's too: a damaged name is not valid UTF-8
            inputs = self._session.get_inputs()
            names = [i.name for i in inputs]
            dims = inputs[0].shape if inputs else []
        except Exception as e:
            raise ModelFileError(f"{path.name} could not be read as an ONNX model (corrupt?): "
                                 f"{type(e).__name__}: {_first_line(e)}") from e
        if len(inputs) != 1:
            raise ModelFileError(f"{path.name} has {len(inputs)} inputs; trojanscope needs one image input")
        self._input = names[0]
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
