"""Untrusted model files (issue 12): no pickle ever runs, hostile archives and sidecars are refused
with one ModelFileError, NaN/Inf weights and outputs are refused. The hostile files are generated
here (tests/_hostile.py), never committed."""

from __future__ import annotations

import json
import logging
import math
import pickle
import zipfile

import pytest
import torch
from _hostile import (
    Evil,
    evil_pickle,
    evil_torch_save,
    hostile_pt2,
    rewrite_zip,
    tiny_net,
    zip_bomb,
)

from trojanscope import ModelFileError
from trojanscope.models import create_model, load_model, save_model, sidecar_path
from trojanscope.models._archive import MAX_MEMBERS, no_code_unpickling

SHAPE = (1, 4, 4)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    net = tiny_net()
    ep = torch.export.export(net, (torch.rand(2, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(ep, str(d / "base.pt2"))
    torch.jit.save(torch.jit.trace(net, torch.rand(2, *SHAPE)), str(d / "base.pt"))
    torch.save(net.state_dict(), d / "base.pth")
    return d


@pytest.fixture(scope="module")
def hostile(base, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    marker = d / "MARKER"
    files = hostile_pt2(base / "base.pt2", d, marker)
    files["ts_data_pkl"] = rewrite_zip(base / "base.pt", d / "ts_data.pt", {"data.pkl": evil_pickle(marker)})
    files["ts_constants_pkl"] = rewrite_zip(base / "base.pt", d / "ts_const.pt",
                                            {"constants.pkl": evil_pickle(marker)})
    files["pth_object"] = d / "obj.pth"
    files["pth_object"].write_bytes(evil_torch_save(marker))
    files["pth_legacy_object"] = d / "legacy.pth"
    files["pth_legacy_object"].write_bytes(evil_torch_save(marker, legacy=True))
    files["pth_raw_pickle"] = d / "raw.pth"
    files["pth_raw_pickle"].write_bytes(evil_pickle(marker))
    files["pth_data_pkl"] = rewrite_zip(base / "base.pth", d / "data_pkl.pth", {"data.pkl": evil_pickle(marker)})
    files["pth_traversal"] = rewrite_zip(base / "base.pth", d / "trav.pth", add={"../x": b"1"})
    return files, marker


PT2_KINDS = ["pt2_sample_inputs_pickle", "pt2_sample_inputs_torch_save", "pt2_sample_inputs_legacy",
             "pt2_weight_use_pickle", "pt2_opaque_constant", "pt2_guards_code", "pt2_sympy_expr",
             "pt2_foreign_target", "pt2_path_traversal"]
OTHER_KINDS = ["ts_data_pkl", "ts_constants_pkl", "pth_object", "pth_legacy_object", "pth_raw_pickle",
               "pth_data_pkl", "pth_traversal"]


def test_the_valid_base_files_load(base):
    x = torch.rand(3, *SHAPE)
    ref = tiny_net()(x)
    for name in ("base.pt2", "base.pt"):
        m = load_model(base / name, in_shape=SHAPE)
        torch.testing.assert_close(m(x), ref)


@pytest.mark.parametrize("kind", PT2_KINDS + OTHER_KINDS)
def test_hostile_file_is_refused_and_nothing_runs(hostile, kind):
    files, marker = hostile
    marker.unlink(missing_ok=True)
    with pytest.raises(ModelFileError, match="refusing|pickled|could not be read"):
        load_model(files[kind], in_shape=SHAPE, arch="small_cnn" if kind.startswith("pth") else None)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pt2_sample_inputs_pickle", "pt2_sample_inputs_torch_save",
                                  "pt2_sample_inputs_legacy", "pt2_weight_use_pickle", "pt2_opaque_constant",
                                  "pt2_sympy_expr"])
def test_guard_alone_stops_torch_export_from_running_code(hostile, kind):
    """Second layer: even without the archive check, torch.export.load under the guard runs nothing
    (unguarded, torch 2.13 creates the marker for every one of these files)."""
    files, marker = hostile
    marker.unlink(missing_ok=True)
    logging.disable(logging.CRITICAL)
    try:
        with pytest.raises(Exception), no_code_unpickling():  # noqa: B017 - any failure, no code
            torch.export.load(str(files[kind]))
    finally:
        logging.disable(logging.NOTSET)
    assert not marker.exists()


def test_torch_load_never_sees_weights_only_false(base, hostile, monkeypatch, tmp_path):
    files, _ = hostile
    real = torch.load
    calls: list[object] = []

    def spy(*args, **kw):
        calls.append(kw.get("weights_only", "default"))
        return real(*args, **kw)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(torch.serialization, "load", spy)
    net = create_model("small_cnn", 10, (1, 16, 16)).eval()
    for suffix in ("pt2", "pt", "pth", "safetensors"):
        p = save_model(net, tmp_path / f"m.{suffix}")
        load_model(p, arch="small_cnn" if suffix == "pth" else None)
    for f in files.values():
        with pytest.raises(ModelFileError):
            load_model(f, in_shape=SHAPE, arch="small_cnn" if f.suffix == ".pth" else None)
    assert calls and all(c is True for c in calls), calls


def test_zip_bomb_and_member_count(tmp_path):
    with pytest.raises(ModelFileError, match="decompression bomb"):
        load_model(zip_bomb(tmp_path / "bomb.pth", size=80 << 20), arch="small_cnn", in_shape=(1, 16, 16),
                   num_classes=10)
    many = tmp_path / "many.pth"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(MAX_MEMBERS + 1):
            z.writestr(f"a/data/{i}", b"")
    with pytest.raises(ModelFileError, match="members"):
        load_model(many, arch="small_cnn", in_shape=(1, 16, 16), num_classes=10)


def test_evil_class_really_runs_when_unpickled(tmp_path):
    """The corpus is meaningful: plain pickle.loads of the payload does create the marker."""
    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# sidecars


@pytest.fixture()
def st(tmp_path):
    net = create_model("small_cnn", 10, (1, 16, 16)).eval()
    return save_model(net, tmp_path / "m.safetensors", mean=[0.5], std=[0.25])


BAD_SIDECARS = [
    ({"num_classes": "ten"}, "num_classes.*integer"),
    ({"num_classes": 10**12}, "num_classes.*outside"),
    ({"num_classes": True}, "num_classes.*integer"),
    ({"num_classes": 1}, "num_classes.*outside"),
    ({"in_shape": [1, 8.5, 8]}, "in_shape.*three integers"),
    ({"in_shape": [1, 200000, 200000]}, "in_shape.*too large"),
    ({"in_shape": [1, 0, 16]}, "in_shape.*positive"),
    ({"in_shape": [1, 16]}, "in_shape.*three integers"),
    ({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, "mean.*channels"),
    ({"std": [0.25, 0.25]}, "std.*has 2 values"),
    ({"std": [0.0]}, "std.*positive"),
    ({"mean": ["a"]}, "mean.*finite numbers"),
    ({"mean": [math.nan]}, "mean.*finite numbers"),
    ({"class_names": ["a", "b"]}, "class_names.*2 names"),
    ({"format_version": 99}, "format_version"),
    ({"arch": 5}, "arch.*string"),
    ({"arch": "no_such_arch"}, "not registered"),
    ({"attack": {"target": 12}}, "attack.*target"),
    ({"normalization_inside": "yes"}, "normalization_inside"),
]


@pytest.mark.parametrize("change,match", BAD_SIDECARS)
def test_bad_sidecar_is_one_clear_error(st, change, match):
    side = json.loads(sidecar_path(st).read_text())
    side.update(change)
    sidecar_path(st).write_text(json.dumps(side))
    with pytest.raises(ModelFileError, match=match):
        load_model(st)


def test_sidecar_not_an_object_or_not_json(st):
    sidecar_path(st).write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="JSON object"):
        load_model(st)
    sidecar_path(st).write_text("{" * 100_000)
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(st)


def test_unknown_sidecar_keys_are_kept_but_listed(st):
    side = json.loads(sidecar_path(st).read_text())
    side["from_the_future"] = {"x": 1}
    sidecar_path(st).write_text(json.dumps(side))
    m = load_model(st)
    assert m.metadata["sidecar_unknown_keys"] == ["from_the_future"]


def test_huge_network_from_a_sidecar_is_never_allocated(st):
    """in_shape within the limits but not matching the weights: refused before building it."""
    side = json.loads(sidecar_path(st).read_text())
    side["in_shape"] = [1, 2048, 2048]
    side["num_classes"] = 100_000
    side["class_names"] = None
    sidecar_path(st).write_text(json.dumps(side))
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(st)


def test_num_classes_must_match_the_output(tmp_path):
    net = create_model("small_cnn", 10, (1, 16, 16)).eval()
    p = save_model(net, tmp_path / "m.pt2")
    side = json.loads(sidecar_path(p).read_text())
    side.update(num_classes=7, class_names=None)
    sidecar_path(p).write_text(json.dumps(side))
    with pytest.raises(ModelFileError, match="returns 10 outputs but 7 classes"):
        load_model(p)


# ---------------------------------------------------------------------------------------------
# NaN / Inf


@pytest.mark.parametrize("suffix", ["safetensors", "pt2", "pt"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_weights_are_refused(tmp_path, suffix, bad):
    net = create_model("small_cnn", 10, (1, 16, 16)).eval()
    with torch.no_grad():
        net.classifier[-1].weight[0, 0] = bad
    p = save_model(net, tmp_path / f"m.{suffix}")
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model(p)


def test_nan_outputs_are_refused(tmp_path):
    class Inf(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] / 0.0

    p = tmp_path / "inf.pt"
    torch.jit.save(torch.jit.trace(Inf(), torch.rand(2, *SHAPE)), str(p))
    with pytest.raises(ModelFileError, match="NaN or infinite outputs"):
        load_model(p, in_shape=SHAPE)


def test_no_source_file_asks_for_unrestricted_unpickling():
    """Static half of the guarantee: nothing in the package calls torch.load(weights_only=False)
    or pickle.load(s) on a file (the CIFAR reader's restricted Unpickler is the one exception)."""
    import re
    from pathlib import Path

    import trojanscope

    bad = []
    for f in Path(trojanscope.__file__).parent.rglob("*.py"):
        if f.name == "_archive.py":  # the guard itself names what it blocks
            continue
        text = f.read_text()
        if re.search(r"weights_only\s*=\s*False", text) or re.search(r"pickle\.loads?\(", text):
            bad.append(f.name)
    assert not bad, bad


def test_truncated_torchscript_storage_is_refused_not_a_crash(base, tmp_path):
    """Found by bench/fuzz.py: a TorchScript archive whose data/0 record is shorter than the tensor
    made torch.jit.load crash the interpreter (SIGSEGV); the archive check refuses it first."""
    p = rewrite_zip(base / "base.pt", tmp_path / "short.pt", {"data/0": b""})
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(p, in_shape=SHAPE)
