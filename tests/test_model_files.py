"""Model files: round trip of every format, normalisation, probability outputs, bad files."""

from __future__ import annotations

import copy
import json
import os
import pickle

import pytest
import torch
from torch import nn

from trojanscope import InputError, ModelFileError
from trojanscope.metrics import predict
from trojanscope.models import (
    WrappedModel,
    create_model,
    load_model,
    require_gradients,
    save_model,
    sidecar_path,
)
from trojanscope.models._logits import LogOutput

MEAN, STD = [0.2], [0.3]
SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("small_cnn", 10, SHAPE).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(1))


def _reference(net, x):
    with torch.no_grad():
        return net((x - MEAN[0]) / STD[0])


@pytest.mark.parametrize("suffix", ["safetensors", "pt2", "pt", "pth", "onnx"])
def test_round_trip(tmp_path, net, x, suffix):
    path = save_model(net, tmp_path / f"m.{suffix}", mean=MEAN, std=STD,
                      metadata={"metrics": {"cta": 0.9, "asr": 0.99}, "class_names": list("abcdefghij"),
                                "attack": {"name": "badnets", "target": 0}})
    side = json.loads(sidecar_path(path).read_text())
    assert side["arch"] == "small_cnn" and side["in_shape"] == list(SHAPE) and side["num_classes"] == 10
    assert side["mean"] == MEAN and side["metrics"]["asr"] == 0.99 and "created" in side
    kw = {"arch": "small_cnn"} if suffix == "pth" else {}
    m = load_model(path, **kw)
    assert isinstance(m, WrappedModel)
    assert m.num_classes == 10 and m.in_shape == SHAPE
    assert m.metadata["class_names"][1] == "b" and m.metadata["attack"]["target"] == 0
    m.train()  # mode switches are safe for every format (torch.export modules refuse them)
    m.eval()
    with torch.no_grad():
        out = m(x)
    # normalisation is preserved: the file takes [0, 1] input
    torch.testing.assert_close(out, _reference(net, x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(out, net(x), atol=1e-3)
    assert m.forward_only == (suffix == "onnx")
    if suffix != "onnx":
        xg = x.clone().requires_grad_(True)
        m(xg).sum().backward()
        assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert torch.equal(predict(m, x), _reference(net, x).argmax(1))


def test_onnx_is_forward_only(tmp_path, net, x):
    m = load_model(save_model(net, tmp_path / "m.onnx"))
    twin = copy.deepcopy(m)  # methods copy models before changing them; the session is reopened
    with torch.no_grad():
        torch.testing.assert_close(twin(x), m(x))
    with pytest.raises(InputError, match="forward-only"):
        require_gradients(m, "neural_cleanse")
    require_gradients(load_model(save_model(net, tmp_path / "m.safetensors")))  # no error


def test_loaded_model_saves_again(tmp_path, net, x):
    m = load_model(save_model(net, tmp_path / "a.safetensors", mean=MEAN, std=STD))
    m2 = load_model(save_model(m, tmp_path / "b.pt"))  # mean/std come from the wrapper
    with torch.no_grad():
        torch.testing.assert_close(m2(x), _reference(net, x), rtol=1e-4, atol=1e-4)


def test_normalize_argument_overrides_the_sidecar(tmp_path, net, x):
    path = save_model(net, tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(x), net(x))
        torch.testing.assert_close(load_model(path, normalize=(MEAN, STD))(x), _reference(net, x))


MODULE_SRC = '''
import torch
from torch import nn

class ProbNet(nn.Module):
    """A user network that ends in a softmax (outputs probabilities)."""
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 4))
    def forward(self, x):
        return torch.softmax(self.body(x), 1)
'''


def test_module_state_dict_and_probability_outputs(tmp_path, x):
    (tmp_path / "usernet.py").write_text(MODULE_SRC)
    import importlib.util

    spec = importlib.util.spec_from_file_location("usernet_t", tmp_path / "usernet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    user = mod.ProbNet().eval()
    torch.save(user.state_dict(), tmp_path / "w.pth")
    m = load_model(tmp_path / "w.pth", module=f"{tmp_path / 'usernet.py'}:ProbNet", in_shape=SHAPE)
    assert isinstance(m.inner, LogOutput) and m.num_classes == 4
    with torch.no_grad():
        out = m(x)
        torch.testing.assert_close(out.softmax(1), user(x), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out, user(x).log())
    # without an input shape there is no probe: the output stays as it is
    raw = load_model(tmp_path / "w.pth", module=f"{tmp_path / 'usernet.py'}:ProbNet")
    assert not isinstance(raw.inner, LogOutput)


# ---- bad files ---------------------------------------------------------------------------------


def test_missing_empty_and_unknown_suffix(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load_model(tmp_path / "e.pt")
    (tmp_path / "k.h5").write_bytes(b"\x89HDF")
    with pytest.raises(ModelFileError, match="unknown model file type.*Keras"):
        load_model(tmp_path / "k.h5")
    with pytest.raises(ModelFileError, match="folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("suffix", ["safetensors", "pt2", "pt", "onnx"])
def test_truncated_and_corrupt(tmp_path, net, suffix):
    path = save_model(net, tmp_path / f"m.{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt|truncated"):
        load_model(path)
    path.write_bytes(os.urandom(2048))
    with pytest.raises(ModelFileError):
        load_model(path)


def test_sidecar_problems(tmp_path, net):
    path = save_model(net, tmp_path / "m.safetensors")
    side = sidecar_path(path)
    good = json.loads(side.read_text())
    side.write_text(json.dumps(dict(good, arch="lenet5")))
    with pytest.raises(ModelFileError, match="do not match the sidecar's architecture 'lenet5'"):
        load_model(path)
    side.write_text(json.dumps(dict(good, num_classes=7)))
    with pytest.raises(ModelFileError, match="shape of"):
        load_model(path)
    side.write_text(json.dumps(dict(good, file="other.safetensors")))
    assert load_model(path).arch == "small_cnn"  # a renamed pair still loads
    (tmp_path / "other.safetensors").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="describes other.safetensors"):
        load_model(path)
    side.write_text(json.dumps(dict(good, file="m.onnx", file_format="onnx")))
    with pytest.raises(ModelFileError, match="describes m.onnx"):
        load_model(path)
    side.write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    side.unlink()
    with pytest.raises(ModelFileError, match="sidecar m.json .*missing"):
        load_model(path)
    # with the architecture given, the bare weights load
    m = load_model(path, arch="small_cnn", num_classes=10, in_shape=SHAPE)
    assert m.num_classes == 10


def test_state_dict_needs_an_architecture(tmp_path, net):
    torch.save(net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match="only weights.*--module"):
        load_model(tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(tmp_path / "w.pt", arch="lenet5", num_classes=10, in_shape=SHAPE)
    with pytest.raises(ModelFileError, match="has no 'Nope'"):
        load_model(tmp_path / "w.pt", module="trojanscope.models.architectures:Nope")


def test_pickled_module_is_refused(tmp_path, net):
    torch.save(copy.deepcopy(net), tmp_path / "whole.pt")  # a whole nn.Module: pickled code
    with pytest.raises(ModelFileError, match="pickled Python objects"):
        load_model(tmp_path / "whole.pt", arch="small_cnn", num_classes=10, in_shape=SHAPE)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_never_runs(tmp_path, legacy):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    if legacy:
        path.write_bytes(pickle.dumps({"w": _Evil(marker)}, protocol=2))
    else:
        torch.save({"w": _Evil(marker)}, path)
    with pytest.raises(ModelFileError):
        load_model(path, arch="small_cnn", num_classes=10, in_shape=SHAPE)
    assert not os.path.exists(marker)


def test_saving_errors(tmp_path):
    class Plain(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3]

    with pytest.raises(InputError, match="registered architecture"):
        save_model(Plain(), tmp_path / "p.safetensors")
    with pytest.raises(InputError, match="in_shape"):
        save_model(Plain(), tmp_path / "p.pt2")
    with pytest.raises(InputError, match="unknown model file type"):
        save_model(Plain(), tmp_path / "p.h5")
    # a non-registry network is fine in a self-contained format
    path = save_model(Plain(), tmp_path / "p.pt2", in_shape=SHAPE)
    m = load_model(path)
    assert m.num_classes == 3 and m.in_shape == SHAPE


def test_formats_side_by_side_keep_their_sidecars(tmp_path, net, x):
    a = save_model(net, tmp_path / "m.pt2", mean=MEAN, std=STD, metadata={"attack": {"target": 3}})
    m = load_model(a)
    b = save_model(m, tmp_path / "m.onnx", metadata={"metrics": {"cta": 0.5}})
    assert sidecar_path(a) != sidecar_path(b)
    assert load_model(a).metadata["file"] == "m.pt2"
    side_b = load_model(b).metadata
    # descriptive entries carry over to a re-saved model, metrics only when given
    assert side_b["attack"] == {"target": 3} and side_b["derived_from"] == "m.pt2"
    assert side_b["metrics"] == {"cta": 0.5}
    with torch.no_grad():  # the normalisation inside the .pt2 program went into the .onnx graph
        torch.testing.assert_close(load_model(b)(x), _reference(net, x), rtol=1e-4, atol=1e-4)
