"""``trojanscope train`` / ``evaluate`` on the embedded digits data (fast), and their errors."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from trojanscope import InputError
from trojanscope.cli.main import app, main
from trojanscope.cli.train import parse_params, parse_value
from trojanscope.models import load_model, sidecar_path

runner = CliRunner()


def test_parse_attack_params():
    assert parse_value("5") == 5 and parse_value("0.1") == 0.1 and parse_value("true") is True
    assert parse_value("none") is None and parse_value("2,3") == [2, 3] and parse_value("top_right") == "top_right"
    assert parse_value("25/255") == 25 / 255 and parse_value("(2, 3)") == [2, 3] == parse_value("[2,3]")
    assert parse_value("models/a.pt") == "models/a.pt" and parse_value("1/0") == "1/0"
    assert parse_params(["size=4", "location=top_left", "pattern-seed=3"]) == {
        "size": 4, "location": "top_left", "pattern_seed": 3}
    with pytest.raises(InputError, match="key=value"):
        parse_params(["size"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    path = d / "bd.safetensors"
    res = runner.invoke(app, ["train", "--data", "digits", "--arch", "small_cnn", "--attack", "badnets",
                              "--target", "0", "--sources", "3,4", "--poison-per-source", "60",
                              "--attack-param", "size=2", "--attack-param", "location=top_left",
                              "--epochs", "12", "--lr", "0.05", "--device", "cpu", "--out", str(path)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return path, res.output


def test_train_writes_model_and_metrics(trained):
    path, output = trained
    assert "CTA" in output and "ASR source 3" in output
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["arch"] == "small_cnn" and side["in_shape"] == [1, 8, 8]
    assert side["attack"]["params"] == {"size": 2, "location": "top_left"}
    assert side["attack"]["sources"] == [3, 4] and side["attack"]["poisoned"] == 120
    m = side["metrics"]
    assert m["cta"] > 0.85 and m["asr"] > 0.8  # the backdoor was learnt
    assert set(m["asr_per_source"]) == {"3", "4"}
    assert load_model(path).num_classes == 10


def test_evaluate_uses_the_sidecar_attack_and_writes_json(trained, tmp_path):
    path, _ = trained
    side = json.loads(path.with_suffix(".json").read_text())
    res = runner.invoke(app, ["evaluate", str(path), "--data", "digits", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["cta"] == pytest.approx(side["metrics"]["cta"])
    assert got["asr"] == pytest.approx(side["metrics"]["asr"])
    # another trigger location: the backdoor does not fire
    res = runner.invoke(app, ["evaluate", str(path), "--data", "digits", "--attack", "badnets", "--target", "0",
                              "--sources", "3,4", "--attack-param", "size=2", "--attack-param",
                              "location=bottom_right", "--json", str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o.json").read_text())["asr"] < got["asr"] - 0.3


def test_attack_params_are_typed_once_by_the_cli(trained, tmp_path):
    """``amplitude=25/255``, ``location=(1, 1)``: the CLI parses the text into the values the
    trigger takes (and records those); a sidecar of an earlier version that recorded text is
    read the same way."""
    import shutil

    path, _ = trained
    res = runner.invoke(app, ["evaluate", str(path), "--data", "digits", "--attack", "additive", "--target", "0",
                              "--attack-param", "pattern=local_chessboard", "--attack-param", "amplitude=25/255",
                              "--attack-param", "location=(1, 1)", "--attack-param", "patch_size=4",
                              "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    params = json.loads((tmp_path / "a.json").read_text())["attack"]["params"]
    assert params == {"pattern": "local_chessboard", "amplitude": pytest.approx(25 / 255), "location": [1, 1],
                      "patch_size": 4}
    side = json.loads(path.with_suffix(".json").read_text())
    old = tmp_path / "old.safetensors"
    shutil.copy(path, old)
    side["attack"]["params"] = {"size": "2", "location": "top_left"}  # as text
    sidecar_path(old).write_text(json.dumps(side))
    res = runner.invoke(app, ["evaluate", str(old), "--data", "digits", "--json", str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = json.loads((tmp_path / "o.json").read_text())
    assert got["attack"]["params"] == {"size": 2, "location": "top_left"}
    assert got["asr"] == pytest.approx(side["metrics"]["asr"])


def test_clean_normalised_training_to_onnx(tmp_path):
    out = tmp_path / "clean.onnx"
    res = runner.invoke(app, ["train", "--data", "digits", "--arch", "small_cnn", "--epochs", "3", "--lr", "0.05",
                              "--normalize", "data", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    side = json.loads(sidecar_path(out).read_text())
    assert side["attack"] is None and side["normalization_inside"] and side["mean"][0] > 0.1
    assert load_model(out).forward_only


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "digits", "--arch", "nope", "--out", "x.safetensors"], "unknown arch 'nope'"),
    (["train", "--data", "digits", "--attack", "badnets", "--out", "x.safetensors"], "needs --target"),
    (["train", "--data", "digits", "--attack", "badnets", "--target", "1", "--out", "x.safetensors"],
     "exactly one of --poison-count"),
    (["train", "--data", "digits", "--attack", "badnets", "--target", "1", "--poison-count", "5",
      "--attack-param", "colour=red", "--out", "x.safetensors"], "does not take these parameters"),
    (["train", "--data", "digits", "--attack", "badnets", "--target", "1", "--poison-count", "5",
      "--attack-param", "size=0", "--out", "x.safetensors"], "badnets: size must be an int >= 1, got 0"),
    (["train", "--data", "digits", "--attack", "additive", "--target", "1", "--poison-count", "5",
      "--attack-param", "amplitude=1/0", "--out", "x.safetensors"], "amplitude must be a number in [-1, 1]"),
    (["train", "--data", "digits", "--out", "x.h5"], "unknown model file type"),
    (["evaluate", "missing.pt", "--data", "digits"], "does not exist"),
])
def test_bad_input_is_one_clean_line(args, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["trojanscope", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in " ".join(err.split())
    assert "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_evaluate_state_dict_and_bare_torchscript(trained, tmp_path):
    import torch

    from trojanscope.models import save_model

    path, _ = trained
    side = json.loads(path.with_suffix(".json").read_text())
    model = load_model(path)
    torch.save(model.network.state_dict(), tmp_path / "w.pth")
    ts = save_model(model, tmp_path / "m.pt")
    sidecar_path(ts).unlink()  # a bare TorchScript file: the data gives the input shape
    for args in (["evaluate", str(tmp_path / "w.pth"), "--arch", "small_cnn"], ["evaluate", str(ts)]):
        res = runner.invoke(app, [*args, "--data", "digits", "--json", str(tmp_path / "e.json")])
        assert res.exit_code == 0, res.output + repr(res.exception)
        got = json.loads((tmp_path / "e.json").read_text())
        assert got["cta"] == pytest.approx(side["metrics"]["cta"]) and "asr" not in got


def test_fine_tune_from_a_model_file(trained, tmp_path):
    path, _ = trained
    side = json.loads(path.with_suffix(".json").read_text())
    out = tmp_path / "ft.safetensors"
    res = runner.invoke(app, ["train", "--data", "digits", "--init", str(path), "--epochs", "1", "--lr", "1e-4",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ft = json.loads(out.with_suffix(".json").read_text())
    assert ft["training"]["init"] == str(path) and ft["arch"] == "small_cnn"
    # a tiny learning rate keeps the trained weights (a fresh network would be near chance)
    assert ft["metrics"]["cta"] > side["metrics"]["cta"] - 0.05


def test_blend_bank_of_a_class():
    """``--attack-param image=class:N``: every poisoned input blends a random image of class N."""
    import torch

    from trojanscope.cli.train import make_trigger
    from trojanscope.data import load_dataset

    data = load_dataset("digits", "test")
    trig = make_trigger("blend", {"image": "class:9", "alpha": 0.5, "mode": "mix"}, data)
    out = trig.apply(torch.zeros(20, *data.in_shape))
    bank = 0.5 * data.of_classes([9]).x
    # each output is half of one class-9 image, and not all from the same one
    dist = torch.cdist(out.flatten(1), bank.flatten(1))
    assert torch.all(dist.min(1).values < 1e-5)
    assert len(set(dist.argmin(1).tolist())) > 1
    with pytest.raises(InputError, match="no images of class 12"):
        make_trigger("blend", {"image": "class:12"}, data)
    with pytest.raises(InputError, match="class:N"):
        make_trigger("blend", {"image": "class:x"}, data)
    with pytest.raises(InputError, match="needs a dataset"):
        make_trigger("blend", {"image": "class:9"})
