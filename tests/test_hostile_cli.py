"""The hostile-file corpus through the real CLI (issue 12): every malicious model file, sidecar and
data file ends in exit status 2 with exactly one ``error:`` line, no traceback, and the marker file
that unpickled code would create never appears. Files are generated here, never committed."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _hostile import (
    evil_pickle,
    evil_torch_save,
    hostile_pt2,
    png_bomb,
    rewrite_zip,
    tiny_net,
    zip_bomb,
)

from trojanscope.data._safe import MAX_IMAGE_PIXELS
from trojanscope.models import create_model, save_model, sidecar_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
SHAPE = (1, 4, 4)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trojanscope", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _assert_refused(r: subprocess.CompletedProcess, marker: Path | None = None) -> str:
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert len(err_lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    if marker is not None:
        assert not marker.exists(), "code from the file ran"
    return err_lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    marker = d / "MARKER"
    net = tiny_net()
    ep = torch.export.export(net, (torch.rand(2, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(ep, str(d / "base.pt2"))
    torch.jit.save(torch.jit.trace(net, torch.rand(2, *SHAPE)), str(d / "base.pt"))
    torch.save(net.state_dict(), d / "base.pth")
    files = hostile_pt2(d / "base.pt2", d, marker)
    files["ts_data_pkl"] = rewrite_zip(d / "base.pt", d / "ts_data.pt", {"data.pkl": evil_pickle(marker)})
    files["ts_constants_pkl"] = rewrite_zip(d / "base.pt", d / "ts_const.pt", {"constants.pkl": evil_pickle(marker)})
    for name, data in (("pth_object", evil_torch_save(marker)),
                       ("pth_legacy_object", evil_torch_save(marker, legacy=True)),
                       ("pth_raw_pickle", evil_pickle(marker))):
        files[name] = d / f"{name}.pth"
        files[name].write_bytes(data)
    files["pth_data_pkl"] = rewrite_zip(d / "base.pth", d / "data_pkl.pth", {"data.pkl": evil_pickle(marker)})
    files["pth_traversal"] = rewrite_zip(d / "base.pth", d / "trav.pth", add={"../../x": b"1"})
    files["pth_zip_bomb"] = zip_bomb(d / "bomb.pth", size=80 << 20)
    return d, files, marker


MODEL_KINDS = ["pt2_sample_inputs_pickle", "pt2_sample_inputs_torch_save", "pt2_sample_inputs_legacy",
               "pt2_weight_use_pickle", "pt2_opaque_constant", "pt2_guards_code", "pt2_sympy_expr",
               "pt2_foreign_target", "pt2_path_traversal", "ts_data_pkl", "ts_constants_pkl", "pth_object",
               "pth_legacy_object", "pth_raw_pickle", "pth_data_pkl", "pth_traversal", "pth_zip_bomb"]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_hostile_model_file_evaluate(corpus, kind):
    _, files, marker = corpus
    marker.unlink(missing_ok=True)
    extra = ["--arch", "small_cnn"] if kind.startswith("pth") else []
    line = _assert_refused(_run("evaluate", str(files[kind]), "--data", "digits", "--device", "cpu", *extra),
                           marker)
    assert "refusing" in line or "pickled" in line, line


@pytest.mark.parametrize("kind", ["pt2_sample_inputs_torch_save"])
def test_hostile_model_file_scan(corpus, kind):
    _, files, marker = corpus
    marker.unlink(missing_ok=True)
    extra = ["--arch", "small_cnn"] if kind.startswith("pth") else []
    _assert_refused(_run("scan", str(files[kind]), "--data", "digits", "--device", "cpu", *extra), marker)


BAD_SIDECARS = {
    "ten": ({"num_classes": "ten"}, "num_classes"),
    "huge_classes": ({"num_classes": 10**12}, "num_classes"),
    "fractional_shape": ({"in_shape": [1, 8.5, 8]}, "in_shape"),
    "huge_shape": ({"in_shape": [1, 200000, 200000]}, "in_shape"),
    "mean_length": ({"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.3, 0.3]}, "mean"),
    "std_length": ({"std": [0.3, 0.3]}, "std"),
}


@pytest.mark.parametrize("name", list(BAD_SIDECARS))
def test_bad_sidecar(tmp_path, name):
    change, key = BAD_SIDECARS[name]
    p = save_model(create_model("small_cnn", 10, (1, 8, 8)).eval(), tmp_path / "m.safetensors", mean=[0.5], std=[0.3])
    side = json.loads(sidecar_path(p).read_text())
    side.update(change)
    sidecar_path(p).write_text(json.dumps(side))
    line = _assert_refused(_run("evaluate", str(p), "--data", "digits", "--device", "cpu"))
    assert key in line, line


def test_nan_weights_are_refused_by_evaluate(tmp_path):
    net = create_model("small_cnn", 10, (1, 8, 8)).eval()
    with torch.no_grad():
        net.classifier[-1].bias[3] = math.nan
    p = save_model(net, tmp_path / "m.safetensors")
    line = _assert_refused(_run("evaluate", str(p), "--data", "digits", "--device", "cpu"))
    assert "NaN" in line


def test_decompression_bombs_in_data(tmp_path):
    model = save_model(create_model("small_cnn", 10, (1, 8, 8)).eval(), tmp_path / "m.safetensors")
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 100
    for c in ("a", "b"):
        (tmp_path / "folder" / c).mkdir(parents=True)
    png_bomb(tmp_path / "folder" / "a" / "bomb.png", side)
    png_bomb(tmp_path / "folder" / "b" / "ok.png", 8)
    line = _assert_refused(_run("evaluate", str(model), "--data", f"folder:{tmp_path / 'folder'}", "--device", "cpu"))
    assert "pixels" in line
    line = _assert_refused(_run("inputs", str(model), "--suspect", str(tmp_path / "folder" / "a"),
                                "--data", "digits", "--device", "cpu", "--method", "strip"))
    assert "pixels" in line
    # a damaged .gz among the MNIST files
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte"):
        raw = bytearray(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(2 * 784)))
        raw[15:25] = b"\xff" * 10
        (mnist / f"{stem}.gz").write_bytes(bytes(raw))
    for stem in ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"):
        (mnist / f"{stem}.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + b"\0\1"))
    line = _assert_refused(_run("evaluate", str(model), "--data", "mnist", "--data-dir", str(tmp_path / "data"),
                                "--device", "cpu"))
    assert "cannot read" in line


def test_more_outputs_than_data_classes_needs_a_label_map(tmp_path):
    """A 1000-output model on 10-class data is an error (it used to report "target class 17"),
    unless the data declares the model's classes (an .npz with num_classes)."""
    import numpy as np

    p = save_model(create_model("small_cnn", 1000, (1, 8, 8)).eval(), tmp_path / "k1000.safetensors")
    line = _assert_refused(_run("scan", str(p), "--data", "digits", "--device", "cpu"))
    assert "1000 outputs" in line and "10 classes" in line
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 10,
             x_test=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_test=np.arange(20) % 10,
             num_classes=np.array(1000))
    r = _run("evaluate", str(p), "--data", f"npz:{npz}", "--device", "cpu")
    assert r.returncode == 0, r.stderr
