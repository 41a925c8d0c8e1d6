"""Every reader on small files written here in the real on-disk formats, and their errors."""

from __future__ import annotations

import gzip
import lzma
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import trojanscope as ts
from trojanscope.data import images_to_float, load_dataset, load_images, read_idx


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_readers(tmp_path, rng, gz, name):
    d = tmp_path / name
    d.mkdir()
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, 7).astype(np.uint8)
        for suffix, arr in ((f"{stem}-images-idx3-ubyte", x), (f"{stem}-labels-idx1-ubyte", y)):
            data = _idx(arr)
            if gz:
                (d / (suffix + ".gz")).write_bytes(gzip.compress(data))
            else:
                (d / suffix).write_bytes(data)
        got = load_dataset(name, split, root=tmp_path)
        assert got.x.shape == (7, 1, 28, 28) and got.x.dtype == torch.float32
        assert torch.equal((got.x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(x))
        assert got.y.tolist() == y.tolist()
    # root may also be the dataset folder itself
    assert len(load_dataset(name, "test", root=d)) == 7


def test_idx_errors(tmp_path, monkeypatch):
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ts.InputError, match="magic"):
        read_idx(p)
    full = _idx(np.zeros((4, 28, 28), np.uint8))
    p.write_bytes(full[:-10])
    with pytest.raises(ts.InputError, match="truncated"):
        read_idx(p)
    with pytest.raises(ts.DataNotFoundError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", "train", root=tmp_path)
    monkeypatch.delenv("TROJANSCOPE_DATA", raising=False)
    with pytest.raises(ts.DataNotFoundError, match="--data-dir"):
        load_dataset("mnist", "train", root=None)


def _cifar_records(rng, n):
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return x, y, np.concatenate([y[:, None], x.reshape(n, -1)], 1).tobytes()


@pytest.mark.parametrize("compress", ["", ".xz", ".gz"])
def test_cifar_binary(tmp_path, rng, compress):
    d = tmp_path / "cifar10"
    d.mkdir()
    xs = []
    for i in range(1, 6):
        x, y, raw = _cifar_records(rng, 3)
        xs.append((x, y))
        comp = {"": lambda b: b, ".xz": lzma.compress, ".gz": gzip.compress}[compress]
        (d / f"data_batch_{i}.bin{compress}").write_bytes(comp(raw))
    x, y, raw = _cifar_records(rng, 4)
    (d / "test_batch.bin").write_bytes(raw)
    tr = load_dataset("cifar10", "train", root=tmp_path)
    assert tr.x.shape == (15, 3, 32, 32)
    assert torch.equal((tr.x[:3] * 255).round().byte(), torch.from_numpy(xs[0][0]))
    assert tr.y[:3].tolist() == xs[0][1].tolist()
    te = load_dataset("cifar10", "test", root=tmp_path)
    assert te.y.tolist() == y.tolist() and te.class_names[0] == "airplane"


def test_cifar_bin_corrupt(tmp_path):
    d = tmp_path / "cifar10"
    d.mkdir()
    (d / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ts.InputError, match="3073"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_cifar_python_pickle_safe(tmp_path, rng):
    d = tmp_path / "cifar10"
    d.mkdir()
    x = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [1, 2, 3, 4, 5]
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": x, b"labels": labels, b"batch_label": b"t"}, f)
    te = load_dataset("cifar10", "test", root=tmp_path)
    assert te.y.tolist() == labels
    assert torch.equal((te.x * 255).round().byte().reshape(5, -1), torch.from_numpy(x))

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": labels}, f)
    with pytest.raises(ts.InputError, match="refusing to unpickle builtins.print"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_gtsrb_layout(tmp_path, rng):
    base = tmp_path / "gtsrb" / "Final_Training" / "Images"
    for c in (0, 2):
        cd = base / f"{c:05d}"
        cd.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 45, 3), dtype=np.uint8)).save(cd / f"{k:05d}.ppm")
            rows.append(f"{k:05d}.ppm;45;40;5;5;39;34;{c}")
        (cd / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    tr = load_dataset("gtsrb", "train", root=tmp_path)
    assert tr.x.shape == (4, 3, 32, 32) and tr.y.tolist() == [0, 0, 2, 2] and tr.num_classes == 43
    test_dir = tmp_path / "gtsrb" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(test_dir / "00000.ppm")
    (tmp_path / "gtsrb" / "GT-final_test.csv").write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n00000.ppm;30;30;0;0;29;29;42\n")
    te = load_dataset("gtsrb", "test", root=tmp_path)
    assert te.y.tolist() == [42] and te.x.shape == (1, 3, 32, 32)
    (test_dir / "00000.ppm").unlink()
    with pytest.raises(ts.DataNotFoundError, match="missing"):
        load_dataset("gtsrb", "test", root=tmp_path)


def test_folder_and_npz(tmp_path, rng):
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{k}.png")
    d = load_dataset("folder", root=tmp_path / "imgs")
    assert d.x.shape == (6, 3, 10, 10) and d.y.tolist() == [0, 0, 0, 1, 1, 1] and d.class_names == ["cat", "dog"]
    x, names = load_images(tmp_path / "imgs")
    assert x.shape == (6, 3, 10, 10) and names[0].endswith("0.png")

    xa = rng.integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=xa, y=np.array([0, 1, 2, 1]))
    n = load_dataset("npz", root=tmp_path / "d.npz")
    assert n.x.shape == (4, 3, 12, 12) and n.num_classes == 3
    assert torch.equal((n.x * 255).round().byte().permute(0, 2, 3, 1), torch.from_numpy(xa))
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(ts.InputError, match="pickled"):
        load_dataset("npz", root=tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ts.InputError, match="not a valid"):
        load_images(tmp_path / "junk.npz")


def test_images_to_float_layouts():
    a = np.zeros((2, 5, 5), np.uint8)
    assert images_to_float(a).shape == (2, 1, 5, 5)
    assert images_to_float(np.zeros((2, 3, 5, 5), np.float32)).shape == (2, 3, 5, 5)
    assert images_to_float(np.zeros((2, 5, 5, 3), np.uint8)).shape == (2, 3, 5, 5)
    with pytest.raises(ts.InputError, match=r"\[0, 1\]"):
        images_to_float(np.full((1, 5, 5), 2.0, np.float32))
    with pytest.raises(ts.InputError, match="NaN"):
        images_to_float(np.full((1, 5, 5), np.nan, np.float32))


def test_real_mnist_if_present(shared_data):
    te = load_dataset("mnist", "test", root=shared_data, limit=100)
    assert te.x.shape == (100, 1, 28, 28) and te.y[:5].tolist() == [7, 2, 1, 0, 4]
