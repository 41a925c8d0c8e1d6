"""Byte-reproducible model files: the same weights give the same bytes (issue 12).

Two sources of noise in what torch and safetensors write:

* safetensors' JSON header comes from a Rust hash map, so the order of its keys (tensor names
  and ``__metadata__`` entries) changes from process to process: the header is rewritten with
  sorted keys (the tensor data, addressed by offsets relative to the end of the header, is kept);
* every zip archive torch writes (``torch.save``, TorchScript, ``.pt2``) holds a random 40-digit
  ``.data/serialization_id``: it is replaced in place, same length, by digits derived from the
  archive's other members (and the zip CRCs patched), so equal content gives equal ids.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
import zlib
from pathlib import Path


def sort_safetensors_header(path: Path) -> None:
    """Rewrite ``path``'s header with sorted keys and canonical separators (8-byte aligned)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def fix_serialization_id(path: Path) -> None:
    """Replace the random ``.data/serialization_id`` of a torch zip archive by a content hash."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        target = next((i for i in infos if i.filename.endswith(".data/serialization_id")), None)
        if target is None or target.compress_type != zipfile.ZIP_STORED:
            return
        h = hashlib.sha256()
        for i in infos:
            if i is not target:
                h.update(i.filename.encode() + b"\0" + struct.pack("<I", i.CRC))
        old = z.read(target)
    digits = str(int.from_bytes(h.digest(), "big"))
    new = (digits * 2)[: len(old)].encode()
    if len(new) != len(old) or not old.isdigit():
        return
    crc = zlib.crc32(new) & 0xFFFFFFFF
    with open(path, "r+b") as f:
        # local file header: signature(4) ... crc at 14, name length at 26, extra length at 28
        f.seek(target.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return
        flags = struct.unpack("<H", local[6:8])[0]
        local_crc = struct.unpack("<I", local[14:18])[0]
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        if local_crc != 0 or not flags & 0x08:
            f.seek(target.header_offset + 14)
            f.write(struct.pack("<I", crc))
        start = target.header_offset + 30 + name_len + extra_len
        f.seek(start)
        f.write(new)
        if flags & 0x08:  # a data descriptor follows the data: [PK\x07\x08] crc sizes
            f.seek(start + len(new))
            sig = f.read(4)
            f.seek(start + len(new) + (4 if sig == b"PK\x07\x08" else 0))
            f.write(struct.pack("<I", crc))
        # central directory entry: crc at offset 16 of the entry
        f.seek(0)
        data = f.read()
        name = target.filename.encode()
        pos = 0
        while True:
            pos = data.find(b"PK\x01\x02", pos)
            if pos < 0:
                break
            n_len = struct.unpack("<H", data[pos + 28 : pos + 30])[0]
            if data[pos + 46 : pos + 46 + n_len] == name:
                f.seek(pos + 16)
                f.write(struct.pack("<I", crc))
                break
            pos += 4
    with zipfile.ZipFile(path) as z:  # the archive is still consistent
        if z.testzip() is not None:  # pragma: no cover - defensive
            raise OSError(f"{path}: rewriting the serialization id broke the archive")
