"""Hostile data files (issue 12): every reader failure is one InputError naming the file, never a
zlib/PIL/numpy exception; decompression bombs are refused by explicit limits."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from _hostile import gzip_bomb_bytes, png_bomb

from trojanscope import InputError
from trojanscope.data import load_dataset, load_images, read_idx
from trojanscope.data._safe import MAX_IMAGE_PIXELS, read_maybe_compressed


def _idx(dtype_code: int, arr: np.ndarray, fmt: str) -> bytes:
    head = bytes([0, 0, dtype_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(fmt).tobytes()


def _mnist(folder, images: bytes, labels: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def test_idx_big_endian_labels_are_converted(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 4)).astype(np.uint8)
    y = np.arange(5)
    _mnist(tmp_path / "mnist", _idx(0x08, x, "u1"), _idx(0x0C, y, ">i4"))
    d = load_dataset("mnist", split="test", root=tmp_path)
    assert d.y.tolist() == y.tolist() and torch.equal(d.x[:, 0], torch.from_numpy(x).float() / 255)


def test_idx_problems_are_input_errors(tmp_path):
    x = np.zeros((5, 4, 4), np.uint8)
    good_labels = _idx(0x08, np.arange(5), "u1")
    _mnist(tmp_path / "a" / "mnist", _idx(0x0B, x, ">i2"), good_labels)  # int16 images
    with pytest.raises(InputError, match="uint8 images"):
        load_dataset("mnist", split="test", root=tmp_path / "a")
    _mnist(tmp_path / "b" / "mnist", _idx(0x08, x, "u1"), _idx(0x08, np.array([0, 1, 2, 3, 12]), "u1"))
    with pytest.raises(InputError, match="labels must be 0..9"):
        load_dataset("mnist", split="test", root=tmp_path / "b")
    # a damaged .gz (zlib.error / BadGzipFile inside gzip)
    _mnist(tmp_path / "c" / "mnist", _idx(0x08, x, "u1"), good_labels)
    f = tmp_path / "c" / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[12:20] = b"\xff" * 8
    f.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="cannot read"):
        load_dataset("mnist", split="test", root=tmp_path / "c")
    # a header declaring 2**32 x 2**32 x 2**32 values (no overflow, no allocation)
    p = tmp_path / "huge-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\0" * 10)
    with pytest.raises(InputError, match="truncated"):
        read_idx(p)


def test_gzip_bomb_is_refused(tmp_path):
    p = tmp_path / "bomb.gz"
    p.write_bytes(gzip_bomb_bytes(8 << 20))
    assert p.stat().st_size < 100_000
    with pytest.raises(InputError, match="decompression bomb"):
        read_maybe_compressed(p, "x", limit=1 << 20)


def test_png_bomb_in_a_folder_and_as_suspect_inputs(tmp_path):
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 100
    (tmp_path / "data" / "0").mkdir(parents=True)
    (tmp_path / "data" / "1").mkdir(parents=True)
    png_bomb(tmp_path / "data" / "0" / "bomb.png", side)
    png_bomb(tmp_path / "data" / "1" / "ok.png", 8)
    with pytest.raises(InputError, match=f"limit is {MAX_IMAGE_PIXELS}"):
        load_dataset("folder", root=tmp_path / "data")
    with pytest.raises(InputError, match="pixels"):
        load_images(tmp_path / "data" / "0")
    (tmp_path / "data" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(InputError, match="not a readable image"):
        load_images(tmp_path / "data" / "1")


@pytest.mark.parametrize("x,match", [
    (np.array([["a", "b"], ["c", "d"]]), "text"),
    (np.ones((2, 4, 4), np.complex64), "complex"),
    (np.array(["2020-01-01"] * 4, dtype="datetime64[D]").reshape(1, 2, 2), "datetime"),
    (np.zeros((0, 4, 4), np.uint8), "empty|non-empty"),
])
def test_npz_with_non_numeric_images(tmp_path, x, match):
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=np.zeros(max(1, len(x)), np.int64))
    with pytest.raises(InputError, match=match):
        load_dataset("npz", root=p)
    with pytest.raises(InputError, match=match):
        load_images(p)


@pytest.mark.parametrize("y,match", [
    (np.array([0.0, 1.0]), "integers|integer class labels"),
    (np.array([0, -1]), "class indices"),
    (np.array([0, 10**9]), "class indices"),
    (np.array([0]), "2 images but 1 labels"),
])
def test_npz_bad_labels(tmp_path, y, match):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 5, 5), np.uint8), y=y)
    with pytest.raises(InputError, match=match):
        load_dataset("npz", root=p)


def test_npz_big_endian_floats_and_declared_classes(tmp_path):
    p = tmp_path / "d.npz"
    x = np.full((2, 1, 4, 4), 0.5, ">f4")
    np.savez(p, x=x, y=np.array([0, 3], ">i8"), num_classes=np.array(1000))
    d = load_dataset("npz", root=p)
    assert d.num_classes == 1000 and d.y.tolist() == [0, 3] and float(d.x.mean()) == 0.5


def test_corrupt_npz_and_object_arrays(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError):
        load_dataset("npz", root=p)
    np.savez(p, x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    with pytest.raises(InputError, match="pickled objects"):
        load_dataset("npz", root=p)
