"""``trojanscope scan``: verdict table, JSON and HTML reports, clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from trojanscope.cli.main import app
from trojanscope.errors import InputError, ModelFileError
from trojanscope.models.io import save_model
from trojanscope.report.schema import validate

QUICK = ["--set", "neural_cleanse.epochs=60", "--set", "neural_cleanse.steps_per_epoch=3",
         "--set", "neural_cleanse.batch_size=24", "--set", "neural_cleanse.patience=3",
         "--set", "neural_cleanse.early_stop_patience=6", "--set", "neural_cleanse.init_cost=0.01"]


@pytest.fixture(scope="module")
def model_file(backdoor, tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "backdoored.safetensors"
    save_model(backdoor["backdoored"], path)
    return path


def test_scan_flags_backdoored_file_and_writes_reports(model_file, tmp_path, backdoor):
    js, page, trig = tmp_path / "out.json", tmp_path / "out.html", tmp_path / "triggers"
    res = CliRunner().invoke(app, ["scan", str(model_file), "--data", "digits", "--method", "neural_cleanse",
                                   "--n-per-class", "20", "--device", "cpu", "--json", str(js),
                                   "--html", str(page), "--save-triggers", str(trig), "--alpha", "0.1", *QUICK])
    assert res.exit_code == 1, res.output  # 1 = backdoored
    assert "BACKDOORED" in res.output and "neural_cleanse" in res.output
    d = json.loads(js.read_text())
    validate(d)  # the shipped JSON Schema
    assert d["kind"] == "scan" and d["model"]["path"] == str(model_file) and d["data"]["n_images"] == 200
    (m,) = d["methods"]
    r = m["result"]
    assert m["status"] == "ok" and r["method"] == "neural_cleanse" and r["backdoored"] is True and r["target"] == backdoor["target"]
    assert r["statistic"] > 2 and 0 < r["p_value"] < 0.1 and r["seconds"] > 0 and r["sources"] == []
    assert r["params"]["epochs"] == 60 and r["params"]["init_cost"] == 0.01 and r["params"]["seed"] == 0
    # the combined verdict is the calibrated one (trojanscope.combine); the report carries it
    v = d["verdict"]
    assert v["exit_code"] == {"clean": 0, "backdoored": 1, "inconclusive": 3}[v["verdict"]] and v["reason"]
    assert v["target"] in (None, backdoor["target"])
    # the reversed trigger, stamped on clean images of other classes, sends them to the target
    te = d["trigger_effect"]
    assert te["method"] == "neural_cleanse" and te["target"] == backdoor["target"] and te["flagged"]
    assert te["flip_rate"] > 0.8 > te["clean_rate"] and backdoor["target"] not in te["labels"]
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 2 and "BACKDOORED" in text
    assert f'data-verdict="{v["verdict"]}"' in text
    # --save-triggers: the tensors as safetensors, one PNG per class
    from safetensors.torch import load_file

    t = load_file(trig / "neural_cleanse.safetensors")
    assert t["mask"].shape == (10, 1, 16, 16) and t["pattern"].shape == (10, 1, 16, 16)
    assert sorted(p.name for p in trig.glob("*.png")) == sorted(f"neural_cleanse_class{k}.png" for k in range(10))
    assert sorted(d["trigger_files"]) == sorted(str(p) for p in trig.iterdir())


def test_experimental_method_warns_and_is_marked(model_file, tmp_path):
    js = tmp_path / "out.json"
    res = CliRunner().invoke(app, ["scan", str(model_file), "--data", "digits", "--method", "lred_perceptible",
                                   "--n-per-class", "4", "--set", "lred_perceptible.steps=5", "--json", str(js)])
    assert res.exit_code in (0, 1, 3), res.output
    assert "lred_perceptible is experimental" in res.output
    d = json.loads(js.read_text())
    validate(d)
    r = d["methods"][0]["result"]
    assert "appendix A.3" in r["extra"]["experimental"]


@pytest.mark.parametrize("args, err, msg", [
    (["--method", "no_such"], InputError, "available: .*neural_cleanse"),
    (["--set", "neural_cleanse.epochs"], InputError, "(?i)method.key=value"),
    (["--method", "neural_cleanse", "--set", "lred.variant=A"], InputError, "not in --method"),
    (["--set", "no_such.x=1"], InputError, "unknown method"),
    (["--set", "neural_cleanse.no_such_param=1"], InputError, "no parameter 'no_such_param'"),
    (["--method", "neural_cleanse", "--ulp", "x.pt"], InputError, "--ulp is for the ulp method"),
    (["--n-per-class", "0"], InputError, "n-per-class"),
])
def test_scan_bad_arguments(model_file, args, err, msg):
    res = CliRunner().invoke(app, ["scan", str(model_file), "--data", "digits", *args])
    assert res.exit_code != 0 and isinstance(res.exception, err)
    assert res.exception is not None and __import__("re").search(msg, str(res.exception))


def test_scan_missing_model_file(tmp_path):
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "none.safetensors"), "--data", "digits"])
    assert isinstance(res.exception, ModelFileError)
