"""Untrusted PyTorch archives: checked before torch sees them, and torch kept from unpickling code.

Threat (issue 12): a ``.pt``/``.pth``/``.pt2`` file is a zip archive, and several of its members
are pickles. ``torch.export.load`` in torch 2.13 retries a failed ``weights_only=True`` load with
``weights_only=False`` (``torch/_export/serde/serialize.py``, ``deserialize_torch_artifact``), reads
"use_pickle" weights/constants with ``weights_only=False`` and "opaque" constants with
``pickle.loads`` (``torch/export/pt2_archive/_package.py``); its JSON program holds sympy
expressions that ``sympy.sympify`` evaluates with ``eval``, operator names resolved with
``getattr`` under ``torch``, and "guards_code" (Python source compiled by ``.module()``).

Two independent layers, so that one bug does not open the door:

1. :func:`check_archive` reads the archive with torch's own zip reader (no parser differential)
   and refuses the whole file, with one :class:`ModelFileError`, when

   * the zip itself is hostile: path traversal or absolute member names, duplicate names, more
     than :data:`MAX_MEMBERS` members, a member or a total declared size above
     :data:`MAX_MEMBER_BYTES` / :data:`MAX_TOTAL_BYTES`, compressed members above
     :data:`MAX_COMPRESSED_MEMBER_BYTES` or with a ratio above :data:`MAX_RATIO` (zip bombs);
   * any member torch would unpickle with Python's pickle (``*.pt``/``*.pth``/``*.pkl`` in a
     ``torch.save``/``.pt2`` archive, a nested ``torch.save`` archive, "use_pickle" payloads)
     fails the restricted ``weights_only`` unpickler (``torch.load(..., weights_only=True)``);
   * a ``.pt2`` holds custom/opaque object constants (unpickled without restriction by torch),
     non-empty ``guards_code``, a symbolic expression outside a strict grammar, an operator
     target outside ``torch.ops.*`` / a small ``_operator``/``math`` allow list, or a call to
     ``aten::from_file`` (which maps an arbitrary file into a tensor);
   * a TorchScript pickle (read by TorchScript's C++ unpickler, which cannot call Python) uses a
     global outside ``__torch__``/``torch``/``collections`` or a protocol-0 instance opcode.

2. :func:`no_code_unpickling` wraps every call into torch's loaders: ``torch.load`` is forced to
   ``weights_only=True`` whatever the caller asks, ``pickle.loads`` inside
   ``torch.export.pt2_archive`` and ``torch._C._pickle_load_obj`` refuse, and the deserialiser's
   ``sympy.sympify`` checks its string first. Even a file the first
   layer missed cannot run a pickle's ``__reduce__``.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickletools
import re
import threading
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..errors import ModelFileError

#: most members an archive may have (a ResNet-50 state dict has ~320)
MAX_MEMBERS = 20_000
#: largest declared (uncompressed) size of one member
MAX_MEMBER_BYTES = 8 << 30
#: largest declared (uncompressed) size of all members together
MAX_TOTAL_BYTES = 32 << 30
#: a deflated member may expand to at most this many bytes (torch stores tensors uncompressed)
MAX_COMPRESSED_MEMBER_BYTES = 64 << 20
#: and at most by this factor (checked for members over 1 MiB)
MAX_RATIO = 200
#: largest JSON program (``models/*.json``) that is parsed
MAX_JSON_BYTES = 256 << 20

_PICKLE_SUFFIXES = (".pkl", ".pt", ".pth", ".bin")
# TorchScript pickles: the C++ unpickler knows only TorchScript classes and these modules
_TS_GLOBAL_PREFIXES = ("__torch__", "torch", "collections")
_OPERATOR_OK = {"getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos",
                "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "abs", "xor"}
_MATH_OK = {"ceil", "floor", "sqrt", "trunc", "log", "exp", "log2", "pow", "fabs"}
_DENIED_OPS = ("from_file",)
_TARGET_RE = re.compile(r"^[A-Za-z0-9_.]+$")
# sympy expressions are eval()ed by sympify: allow literals, operators, CamelCase sympy names,
# symbol names like s31/u0, keyword arguments, and quoted plain names. No dots, no dunders.
_EXPR_TOKEN = re.compile(r"\s+|'[A-Za-z_][A-Za-z0-9_]*'|\d+(?:\.\d+)?(?:e[+-]?\d+)?|==|!=|<=|>=|\*\*|//|"
                         r"[-+*/%(),<>=]|[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL_NAME = re.compile(r"^[a-z]+\d+$")
_CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*(?:_[a-z0-9]+)*$")


def _refuse(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"refusing {path.name}: {why}")


# --------------------------------------------------------------------------------------------
# layer 1: look before torch does


def check_zip_members(path: Path) -> list[zipfile.ZipInfo]:
    """Names, counts and declared sizes of a zip archive; raises on anything hostile."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception as e:  # BadZipFile, OSError, ValueError, NotImplementedError, ...
        raise _refuse(path, f"not a readable zip archive (corrupt or truncated?): {_first_line(e)}") from e
    if len(infos) > MAX_MEMBERS:
        raise _refuse(path, f"the archive has {len(infos)} members (more than {MAX_MEMBERS}): a zip bomb?")
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if name in seen:
            raise _refuse(path, f"the archive holds the member {name!r} twice")
        seen.add(name)
        if not _safe_name(name):
            raise _refuse(path, f"the archive member {name!r} points outside the archive (path traversal)")
        size = int(info.file_size)
        total += size
        if size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
            raise _refuse(path, f"the archive declares {total / 2**30:.1f} GiB of content (limit "
                                f"{MAX_TOTAL_BYTES / 2**30:.0f} GiB, {MAX_MEMBER_BYTES / 2**30:.0f} GiB per member)")
        if info.compress_type != zipfile.ZIP_STORED:
            ratio = size / max(1, int(info.compress_size))
            if size > MAX_COMPRESSED_MEMBER_BYTES or (size > (1 << 20) and ratio > MAX_RATIO):
                raise _refuse(path, f"the compressed member {name!r} expands to {size} bytes "
                                    f"({ratio:.0f}x): a decompression bomb?")
    return infos


def is_zip(path: Path) -> bool:
    """``zipfile.is_zipfile`` that never raises (it lets ``BadZipFile`` of some damaged end
    records escape): a file Python cannot even probe is not a readable archive."""
    try:
        return zipfile.is_zipfile(path)
    except Exception:
        return False


def _safe_name(name: str) -> bool:
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return False
    return ".." not in PurePosixPath(name).parts


def check_archive(path: Path, kind: str) -> None:
    """Refuse ``path`` unless every member torch would unpickle passes the restricted unpickler.

    Args:
        path: a zip archive (``.pt``, ``.pth``, ``.pt2``) or a legacy ``torch.save`` pickle stream.
        kind: "state_dict", "export" or "torchscript": how the file is about to be loaded.

    Raises:
        ModelFileError: one line naming the member and the reason.
    """
    if not is_zip(path):
        if kind == "state_dict":  # a legacy (pre-1.6) torch.save stream: the whole file is pickles
            _check_torch_pickle(path, path.name, path.read_bytes())
            return
        raise _refuse(path, "not a zip archive (corrupt or truncated?)")
    check_zip_members(path)
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = list(reader.get_all_records())
    except Exception as e:
        raise _refuse(path, f"torch cannot read the archive (corrupt or truncated?): {_first_line(e)}") from e
    if len(records) != len(set(records)):
        raise _refuse(path, "the archive lists a member twice")

    def read(name: str) -> bytes:
        try:
            return bytes(reader.get_record(name))
        except Exception as e:
            raise _refuse(path, f"member {name!r} cannot be read (corrupt?): {_first_line(e)}") from e

    if kind == "torchscript":
        sizes = _record_sizes(path)
        for name in records:
            if name.endswith(".pkl") or name.endswith(".debug_pkl"):
                storages = _check_torchscript_pickle(path, name, read(name))
                # the pickles torch.jit.load reads; traced_inputs.pkl keeps empty records by design
                folder = name[: -len(".pkl")] if name in ("data.pkl", "constants.pkl") else None
                for dtype_name, key, numel in storages if folder else ():
                    _check_storage(path, f"{folder}/{key}", dtype_name, numel, sizes)
            elif name.startswith("code/") and name.endswith(".py"):
                text = read(name).decode("utf-8", "replace")
                for op in _DENIED_OPS:
                    if re.search(rf"\b{op}\b", text):
                        raise _refuse(path, f"its TorchScript code calls {op} (file access)")
        return
    if kind == "state_dict":
        # torch.load(weights_only=True) *is* the restricted unpickler; run it on the whole file
        _check_torch_pickle(path, path.name, None)
        return
    # export (.pt2): configs say which payloads torch unpickles
    pickled: set[str] = set()
    for name in records:
        low = name.lower()
        if low.endswith(".json"):
            data = read(name)
            if len(data) > MAX_JSON_BYTES:
                raise _refuse(path, f"member {name!r} is {len(data)} bytes of JSON (limit {MAX_JSON_BYTES})")
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError) as e:
                raise _refuse(path, f"member {name!r} is not valid JSON: {_first_line(e)}") from e
            pickled |= _check_pt2_json(path, name, doc)
        elif low.endswith(_PICKLE_SUFFIXES):
            pickled.add(name)
    for name in sorted(pickled):
        if name not in records:
            raise _refuse(path, f"a config names the pickled payload {name!r}, which the archive lacks")
        _check_torch_pickle(path, name, read(name))


def _check_pt2_json(path: Path, member: str, doc: Any) -> set[str]:
    """Walk a .pt2 JSON member; returns the payload members it says are pickled."""
    pickled: set[str] = set()
    folder = member.rsplit("/", 1)[0] + "/" if "/" in member else ""
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key == "guards_code" and value:
                raise _refuse(path, f"{member} carries Python guard code, which torch would compile and run")
            if key == "target" and isinstance(value, str):
                _check_target(path, member, value)
            elif key == "expr_str" and isinstance(value, str):
                _check_expr(path, member, value)
            elif key == "range_constraints" and isinstance(value, dict):
                for name in value:
                    _check_expr(path, member, str(name))
            elif key == "config" and isinstance(value, dict) and member.endswith("_config.json"):
                for fqn, meta in value.items():
                    if not isinstance(meta, dict):
                        continue
                    name = str(meta.get("path_name", ""))
                    if name.startswith(("custom_obj", "opaque")):
                        raise _refuse(path, f"constant {fqn!r} is a Python/TorchBind object, which torch "
                                            "would unpickle without restriction")
                    if not re.match(r"^[A-Za-z0-9_.-]+$", name) or ".." in name:
                        raise _refuse(path, f"{member} names the payload {name!r} outside its folder")
                    if meta.get("use_pickle"):
                        pickled.add(folder + name)
            stack.append(value)
    return pickled


def _check_target(path: Path, member: str, target: str) -> None:
    parts = target.split(".")
    ok = bool(_TARGET_RE.match(target)) and not any(p.startswith("__") or not p for p in parts)
    if ok:
        if parts[0] == "torch":
            ok = (len(parts) >= 4 and parts[1] == "ops") or (len(parts) == 2 and parts[1].startswith("sym_"))
        elif parts[0] == "_operator":
            ok = len(parts) == 2 and parts[1] in _OPERATOR_OK
        elif parts[0] == "math":
            ok = len(parts) == 2 and parts[1] in _MATH_OK
        else:
            ok = False
    if not ok:
        raise _refuse(path, f"{member} calls {target[:80]!r}, which is not a torch operator")
    if any(op in parts for op in _DENIED_OPS):
        raise _refuse(path, f"{member} calls {target}, which reads or maps arbitrary files")


def _check_expr(path: Path, member: str, expr: str) -> None:
    """sympy.sympify(expr) runs eval(): admit only a plain arithmetic/srepr grammar."""
    if len(expr) > 10_000 or "__" in expr:
        raise _refuse(path, f"{member} holds a symbolic expression that is not plain arithmetic")
    pos = 0
    tokens = []
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            raise _refuse(path, f"{member} holds a symbolic expression with {expr[pos:pos + 10]!r}, "
                                "which is not plain arithmetic")
        tokens.append(m.group())
        pos = m.end()
    words = [t for t in tokens if not t.isspace()]
    for i, tok in enumerate(words):
        if not (tok[0].isalpha() or tok[0] == "_"):
            continue
        keyword = i + 1 < len(words) and words[i + 1] == "="
        if not (_CAMEL.match(tok) or _SYMBOL_NAME.match(tok) or (keyword and tok.islower())):
            raise _refuse(path, f"{member} holds a symbolic expression naming {tok!r}, "
                                "which is not plain arithmetic")


def _check_torch_pickle(path: Path, member: str, data: bytes | None) -> None:
    """``torch.load(weights_only=True)``: the restricted unpickler, on a member or the file."""
    src: Any = io.BytesIO(data) if data is not None else path
    try:
        with no_code_unpickling():
            torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        what = "the file" if data is None else f"member {member!r}"
        msg = _first_line(e)
        if "Unsupported global" in msg or "weights_only" in msg.lower() or isinstance(e, _pickle_errors()):
            raise _refuse(path, f"{what} holds pickled Python objects, and unpickling them could run "
                                "arbitrary code; only plain tensors and containers are read "
                                f"(restricted unpickler: {msg[:160]})") from e
        raise _refuse(path, f"{what} fails the restricted unpickler (corrupt or truncated?): "
                            f"{type(e).__name__}: {msg[:160]}") from e


def _pickle_errors() -> tuple[type[BaseException], ...]:
    import pickle

    return (pickle.UnpicklingError,)


def _record_sizes(path: Path) -> dict[str, int]:
    """Declared sizes of the members, by torch's record name (without the top folder)."""
    with zipfile.ZipFile(path) as z:
        return {i.filename.split("/", 1)[1] if "/" in i.filename else i.filename: int(i.file_size)
                for i in z.infolist()}


_ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
             "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
             "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt8Storage": 1, "QUInt8Storage": 1,
             "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1}


def _check_storage(path: Path, record: str, dtype_name: str, numel: Any, sizes: dict[str, int]) -> None:
    """A storage a TorchScript pickle refers to must exist and hold its bytes: TorchScript's C++
    reader does not check, and a short record crashed the interpreter (SIGSEGV, found by fuzzing)."""
    itemsize = _ITEMSIZE.get(dtype_name)
    if itemsize is None:
        raise _refuse(path, f"{record} has the unknown storage type {dtype_name!r}")
    if not isinstance(numel, int) or numel < 0:
        raise _refuse(path, f"{record} has an invalid element count {numel!r}")
    if record not in sizes:
        raise _refuse(path, f"the storage {record!r} is missing from the archive")
    if sizes[record] < numel * itemsize:
        raise _refuse(path, f"the storage {record!r} holds {sizes[record]} bytes but needs {numel * itemsize} "
                            "(truncated?)")


def _check_torchscript_pickle(path: Path, member: str, data: bytes) -> list[tuple[str, str, Any]]:
    """Static scan (nothing is executed) of a pickle read by TorchScript's C++ unpickler.

    Returns the storages it refers to as (storage type, record key, element count), from a light
    emulation of the stack (strings, ints, globals, memo, MARK/TUPLE) around BINPERSID.
    """
    tokens: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    storages: list[tuple[str, str, Any]] = []
    scalar_ops = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1", "BININT2",
                  "LONG1", "INT", "LONG", "BINSTRING", "SHORT_BINSTRING"}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in scalar_ops:
                tokens.append(arg)
            elif name == "GLOBAL":
                tokens.append(("global", str(arg)))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = tokens[-1] if tokens else None
            elif name == "MEMOIZE":
                memo[len(memo)] = tokens[-1] if tokens else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                tokens.append(memo.get(int(arg)))
            elif name == "MARK":
                marks.append(len(tokens))
            elif name == "TUPLE" and marks:
                start = marks.pop()
                items = tuple(tokens[start:])
                del tokens[start:]
                tokens.append(("tuple", items))
            elif name == "BINPERSID":
                pid = tokens[-1] if tokens else None
                items = pid[1] if isinstance(pid, tuple) and pid and pid[0] == "tuple" else ()
                if len(items) >= 5 and items[0] == "storage":
                    g = items[1]
                    gname = g[1].split(" ", 1)[-1] if isinstance(g, tuple) and g and g[0] == "global" else ""
                    storages.append((gname, str(items[2]), items[4]))
                else:
                    raise _refuse(path, f"member {member!r} has a persistent id that is not a storage")
            elif name in ("APPENDS", "SETITEMS", "DICT", "LIST", "FROZENSET", "ADDITEMS", "OBJ", "INST") and marks:
                start = marks.pop()
                del tokens[start:]
                tokens.append(("container",))

            if op.name in ("INST", "OBJ", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"):
                raise _refuse(path, f"member {member!r} uses the pickle opcode {op.name}, which "
                                    "TorchScript never writes")
            if op.name == "GLOBAL":
                module = str(arg).split(" ", 1)[0]
                if module.split(".", 1)[0] not in _TS_GLOBAL_PREFIXES:
                    raise _refuse(path, f"member {member!r} refers to the Python global {arg!r}, which "
                                        "is not TorchScript")
    except ModelFileError:
        raise
    except Exception as e:  # ValueError and friends from a malformed stream
        raise _refuse(path, f"member {member!r} is not a valid pickle (corrupt?): {_first_line(e)}") from e
    return storages


def check_graph_targets(path: Path, module: torch.nn.Module) -> None:
    """After ``torch.export.load``: every call in every graph is a torch operator (defence in depth)."""
    import operator

    allowed_builtins = {getattr(operator, n) for n in _OPERATOR_OK if hasattr(operator, n)}
    op_types = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        for node in getattr(graph, "nodes", ()):
            if node.op not in ("call_function",):
                continue
            t = node.target
            if isinstance(t, op_types):
                if any(op in str(t) for op in _DENIED_OPS):
                    raise _refuse(path, f"its graph calls {t}, which reads or maps arbitrary files")
                continue
            if t in allowed_builtins or getattr(t, "__module__", "") in ("math",) or \
                    (getattr(t, "__name__", "").startswith("sym_") and getattr(t, "__module__", "") == "torch"):
                continue
            raise _refuse(path, f"its graph calls {getattr(t, '__name__', t)!r}, which is not a torch operator")


# --------------------------------------------------------------------------------------------
# layer 2: torch may never unpickle code while a user file is loaded

_LOCK = threading.RLock()


class _RefusedUnpickling(ModelFileError):
    pass


def _refuse_pickle(*_: Any, **__: Any) -> Any:
    raise _RefusedUnpickling("the file asks torch to unpickle Python objects without restriction; refused")


class _PickleShim(types.ModuleType):
    """``pickle`` for torch.export's archive reader: everything but unrestricted loading."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__("pickle")
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name in ("loads", "load", "Unpickler"):
            return _refuse_pickle
        return getattr(self._real, name)


class _SympyShim(types.ModuleType):
    """``sympy`` for torch.export's deserialiser: ``sympify`` of a string (an ``eval``) only
    after the string passed :func:`_check_expr`."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__("sympy")
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name == "sympify":
            return self._sympify
        return getattr(self._real, name)

    def _sympify(self, a: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(a, str):
            _check_expr(Path("the model file"), "its program", a)
        return self._real.sympify(a, *args, **kw)


@contextlib.contextmanager
def no_code_unpickling() -> Iterator[None]:
    """While active, ``torch.load`` always runs with ``weights_only=True``, torch.export's
    unrestricted ``pickle.loads``/``_pickle_load_obj`` paths raise :class:`ModelFileError`, and
    its ``sympy.sympify`` (an ``eval``) only sees strings of the plain arithmetic grammar."""
    import torch.serialization as ser

    with _LOCK:
        real_load = torch.load
        if getattr(real_load, "_trojanscope_guard", False):  # nested: already guarded
            yield
            return

        def safe_load(f: Any, map_location: Any = None, pickle_module: Any = None, *,
                      weights_only: bool | None = None, **kw: Any) -> Any:
            kw.pop("weights_only", None)  # and a custom pickle_module is never honoured
            return real_load(f, map_location=map_location, weights_only=True, **kw)

        safe_load._trojanscope_guard = True  # type: ignore[attr-defined]
        patches: list[tuple[Any, str, Any]] = [(torch, "load", safe_load)]
        if ser.load is real_load:
            patches.append((ser, "load", safe_load))
        if hasattr(torch._C, "_pickle_load_obj"):
            patches.append((torch._C, "_pickle_load_obj", _refuse_pickle))
        try:
            from torch._export.serde import serialize as _serde

            if isinstance(getattr(_serde, "sympy", None), types.ModuleType):
                patches.append((_serde, "sympy", _SympyShim(_serde.sympy)))
        except ImportError:  # pragma: no cover - other torch layouts
            pass
        try:
            from torch.export.pt2_archive import _package

            if isinstance(getattr(_package, "pickle", None), types.ModuleType):
                patches.append((_package, "pickle", _PickleShim(_package.pickle)))
        except ImportError:  # pragma: no cover - other torch layouts
            pass
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        for obj, name, new in patches:
            setattr(obj, name, new)
        try:
            yield
        finally:
            for obj, name, old in reversed(saved):
                setattr(obj, name, old)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
