"""Hostile model files, generated at test time (never committed): pickles whose ``__reduce__``
would create a marker file, placed in every archive member torch could unpickle, zip tricks,
decompression bombs and bad sidecars. Shared by ``test_hostile_files.py`` and ``bench/fuzz.py``."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import torch
from torch import nn


class Evil:
    """Unpickling this runs ``open(marker, 'w')``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def evil_pickle(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(Evil(marker), protocol=protocol)


def evil_torch_save(marker: Path, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "x": Evil(marker)}, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes] | None = None,
                add: dict[str, bytes] | None = None, edit=None) -> Path:
    """Copy the zip ``src`` to ``dst`` with members replaced (name suffix match) or added.

    ``edit(name, data) -> data`` may change any member."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        prefix = zin.namelist()[0].split("/", 1)[0] + "/"
        for info in zin.infolist():
            data = zin.read(info)
            rel = info.filename[len(prefix):]
            for key, new in replace.items():
                if rel == key:
                    data = new
            if edit is not None:
                data = edit(rel, data)
            zout.writestr(info.filename, data)
        for rel, data in add.items():
            zout.writestr(rel if rel.startswith(("/", "..")) else prefix + rel, data)
    return dst


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def hostile_pt2(base: Path, out: Path, marker: Path) -> dict[str, Path]:
    """Every way a .pt2 could smuggle code, each in its own file, from a valid ``base``."""
    files: dict[str, Path] = {}
    files["pt2_sample_inputs_pickle"] = rewrite_zip(base, out / "sample_raw.pt2",
                                                    {"data/sample_inputs/model.pt": evil_pickle(marker)})
    files["pt2_sample_inputs_torch_save"] = rewrite_zip(base, out / "sample_ts.pt2",
                                                        {"data/sample_inputs/model.pt": evil_torch_save(marker)})
    files["pt2_sample_inputs_legacy"] = rewrite_zip(
        base, out / "sample_legacy.pt2", {"data/sample_inputs/model.pt": evil_torch_save(marker, legacy=True)})

    def use_pickle(rel: str, data: bytes) -> bytes:
        if rel == "data/weights/model_weights_config.json":
            cfg = json.loads(data)
            first = next(iter(cfg["config"].values()))
            first["use_pickle"] = True
            return json.dumps(cfg).encode()
        if rel == "data/weights/weight_0":
            return evil_torch_save(marker)
        return data

    files["pt2_weight_use_pickle"] = rewrite_zip(base, out / "weight_pickle.pt2", edit=use_pickle)

    def opaque(rel: str, data: bytes) -> bytes:
        if rel == "data/constants/model_constants_config.json":
            return json.dumps({"config": {"evil": {"path_name": "opaque_obj_0", "is_param": False,
                                                   "use_pickle": True, "tensor_meta": None}}}).encode()
        return data

    files["pt2_opaque_constant"] = rewrite_zip(base, out / "opaque.pt2", edit=opaque,
                                               add={"data/constants/opaque_obj_0": evil_pickle(marker)})

    def guards(rel: str, data: bytes) -> bytes:
        if rel == "models/model.json":
            doc = json.loads(data)
            doc["guards_code"] = [f"open({str(marker)!r}, 'w')"]
            return json.dumps(doc).encode()
        return data

    files["pt2_guards_code"] = rewrite_zip(base, out / "guards.pt2", edit=guards)

    def sympy_eval(rel: str, data: bytes) -> bytes:
        if rel == "models/model.json":
            text = data.decode()
            code = f"__import__('builtins').open({str(marker)!r}, 'w')"
            text = text.replace("\"expr_str\": \"Symbol(", f"\"expr_str\": \"{code} or Symbol(", 1)
            return text.encode()
        return data

    files["pt2_sympy_expr"] = rewrite_zip(base, out / "sympy.pt2", edit=sympy_eval)

    def target(rel: str, data: bytes) -> bytes:
        if rel == "models/model.json":
            return data.decode().replace("torch.ops.aten.linear.default", "torch.os.system", 1).encode()
        return data

    files["pt2_foreign_target"] = rewrite_zip(base, out / "target.pt2", edit=target)
    files["pt2_path_traversal"] = rewrite_zip(base, out / "traversal.pt2",
                                              add={"../../evil.txt": b"x"})
    return files


def zip_bomb(path: Path, size: int = 200 << 20) -> Path:
    """A torch-like archive whose one deflated member expands to ``size`` zero bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        z.writestr("a/version", b"3\n")
        with z.open("a/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
    return path


def gzip_bomb_bytes(size: int = 64 << 20) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(bytes(size)) + c.flush()


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid greyscale PNG of ``side`` x ``side`` pixels (a few hundred KB compressed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = bytes(side + 1)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path
