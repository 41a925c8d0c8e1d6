"""``trojanscope scan``: verdict table, JSON and HTML reports, clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from trojanscope.cli.main import app
from trojanscope.errors import InputError, ModelFileError
from trojanscope.models.io import save_model

QUICK = ["--set", "neural_cleanse.epochs=60", "--set", "neural_cleanse.steps_per_epoch=3",
         "--set", "neural_cleanse.batch_size=24", "--set", "neural_cleanse.patience=3",
         "--set", "neural_cleanse.early_stop_patience=6", "--set", "neural_cleanse.init_cost=0.01"]


@pytest.fixture(scope="module")
def model_file(backdoor, tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "backdoored.safetensors"
    save_model(backdoor["backdoored"], path)
    return path


def test_scan_flags_backdoored_file_and_writes_reports(model_file, tmp_path, backdoor):
    js, page = tmp_path / "out.json", tmp_path / "out.html"
    res = CliRunner().invoke(app, ["scan", str(model_file), "--data", "digits", "--method", "neural_cleanse",
                                   "--n-per-class", "20", "--device", "cpu", "--json", str(js),
                                   "--html", str(page), *QUICK])
    assert res.exit_code == 0, res.output
    assert "BACKDOORED" in res.output and "neural_cleanse" in res.output
    d = json.loads(js.read_text())
    assert d["schema"] == 1 and d["model"] == str(model_file) and d["n_clean"] == 200
    (r,) = d["results"]
    assert r["method"] == "neural_cleanse" and r["backdoored"] is True and r["target"] == backdoor["target"]
    assert r["statistic"] > 2 and r["p_value"] is None and r["seconds"] > 0 and r["sources"] == []
    assert r["params"]["epochs"] == 60 and r["params"]["init_cost"] == 0.01 and r["params"]["seed"] == 0
    assert d["combined"] == {"backdoored": True, "votes": 1, "methods": 1, "target": backdoor["target"],
                             "target_votes": {str(backdoor["target"]): 1}, "rule": "any"}
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 2 and "BACKDOORED" in text


def test_experimental_method_warns_and_is_marked(model_file, tmp_path):
    js = tmp_path / "out.json"
    res = CliRunner().invoke(app, ["scan", str(model_file), "--data", "digits", "--method", "lred_perceptible",
                                   "--n-per-class", "4", "--set", "lred_perceptible.steps=5", "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "lred_perceptible is experimental" in res.output
    (r,) = json.loads(js.read_text())["results"]
    assert "appendix A.3" in r["extra"]["experimental"]


@pytest.mark.parametrize("args, err, msg", [
    (["--method", "no_such"], InputError, "available: .*neural_cleanse"),
    (["--set", "neural_cleanse.epochs"], InputError, "method.key=value"),
    (["--set", "lred.variant=A"], InputError, "not in --method"),
    (["--set", "neural_cleanse.no_such_param=1"], InputError, "bad parameter"),
    (["--ulp", "x.pt"], InputError, "--method ulp"),
    (["--n-per-class", "0"], InputError, "n-per-class"),
])
def test_scan_bad_arguments(model_file, args, err, msg):
    res = CliRunner().invoke(app, ["scan", str(model_file), "--data", "digits", *args])
    assert res.exit_code != 0 and isinstance(res.exception, err)
    assert res.exception is not None and __import__("re").search(msg, str(res.exception))


def test_scan_missing_model_file(tmp_path):
    res = CliRunner().invoke(app, ["scan", str(tmp_path / "none.safetensors"), "--data", "digits"])
    assert isinstance(res.exception, ModelFileError)
