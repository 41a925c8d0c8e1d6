"""Guard (several input detectors calibrated together) and the ``trojanscope inputs`` command."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_snapshot
from typer.testing import CliRunner

import trojanscope as ts
from trojanscope.cli.main import app
from trojanscope.detectors.input import create_input_detector
from trojanscope.guard import Guard
from trojanscope.report.schema import validate


@pytest.fixture(scope="module")
def data(backdoor):
    fit, held = backdoor["test"].split(0.5, seed=1)
    x_nt = held.of_classes([backdoor["target"]], exclude=True).x
    return {"fit": fit, "clean": held.x, "trig": backdoor["trigger"].apply(x_nt)}


def test_guard_flags_triggers_and_keeps_the_overall_fpr(backdoor, data):
    model = backdoor["backdoored"]
    snap = state_snapshot(model)
    guard = Guard(model, {"kde": {}, "lid": {"k": 10}}, fpr=0.1).fit(data["fit"])
    assert {d.fpr for d in guard.detectors_.values()} == {0.05}  # Bonferroni split over 2
    res = guard.predict(data["trig"])
    assert set(res.scores) == {"kde", "lid"} and res.scores["kde"].shape == (len(data["trig"]),)
    assert torch.equal(res.flagged, res.flags["kde"] | res.flags["lid"])
    assert float(res.flagged.float().mean()) > 0.8
    assert (res.labels == backdoor["target"]).float().mean() > 0.9  # the labels are the model's
    clean = guard.predict(data["clean"])
    n_cal = len(guard.detectors_["kde"].calibration_scores_)
    tol = 3 * math.sqrt(0.1 * 0.9 * (1 / n_cal + 1 / len(data["clean"])))
    assert float(clean.flagged.float().mean()) <= 0.1 + tol
    d = clean.to_dict()
    assert d["thresholds"]["kde"] == pytest.approx(guard.detectors_["kde"].threshold_)
    assert_unchanged(model, snap)


def test_guard_accepts_instances_and_names(backdoor, data):
    inst = create_input_detector("mutation", n_mutants=20, seed=5)
    guard = Guard(backdoor["backdoored"], [inst, "kde"], fpr=0.05, split_fpr=False).fit(data["fit"])
    assert guard.detectors_["mutation"].n_mutants == 20 and guard.detectors_["mutation"].seed == 5
    assert guard.detectors_["mutation"] is not inst and not hasattr(inst, "threshold_")
    assert {d.fpr for d in guard.detectors_.values()} == {0.05}


@pytest.mark.parametrize("spec, msg", [
    (["kde", "kde"], "once"),
    (["nope"], "available"),
    ([], "at least one"),
    ({"kde": {"bandwidth": 3}}, "parameters"),
    ([3], "registry name"),
])
def test_guard_bad_specs(spec, msg, backdoor, data):
    with pytest.raises(ts.InputError, match=msg):
        Guard(backdoor["backdoored"], spec).fit(data["fit"])


def test_guard_errors(backdoor, data):
    with pytest.raises(ts.InputError, match="fit"):
        Guard(backdoor["backdoored"], "kde").predict(data["clean"])
    with pytest.raises(ts.InputError, match="fpr"):
        Guard(backdoor["backdoored"], "kde", fpr=1.5).fit(data["fit"])
    small = ts.load_dataset("digits", "test")  # 8x8 images for a 16x16 model
    with pytest.raises(ts.InputError, match="cannot process"):
        Guard(backdoor["backdoored"], "kde").fit(small)


@pytest.fixture(scope="module")
def model_file(backdoor, tmp_path_factory):
    from trojanscope.models.io import save_model

    m = copy.deepcopy(backdoor["backdoored"])
    path = tmp_path_factory.mktemp("model") / "bd.safetensors"
    save_model(m, path)
    return path


def test_cli_inputs_npz_json(backdoor, model_file, tmp_path):
    test = backdoor["test"]
    xc = test.of_classes([backdoor["target"]], exclude=True).x[:6]
    x = torch.cat([xc, backdoor["trigger"].apply(xc)])
    npz = tmp_path / "suspect.npz"
    np.savez(npz, x=(x * 255).round().byte().permute(0, 2, 3, 1).numpy())  # uint8 NHWC
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["inputs", str(model_file), "--data", "digits", "--suspect", str(npz),
                                 "--method", "kde,mutation", "--param", "mutation.n_mutants=20",
                                 "--n-clean", "30", "--fpr", "0.1", "--json", str(out)])
    assert r.exit_code in (0, 1), r.output + repr(r.exception)
    assert "kde" in r.output and "flagged" in r.output
    d = json.loads(out.read_text())
    assert r.exit_code == (1 if any(d["flagged"]) else 0)  # 1 = some input flagged
    assert any(d["flagged"][6:])  # the triggered inputs are
    validate(d)  # the shipped inputs-report schema: the envelope every report shares
    assert d["schema"] == 2 and d["kind"] == "inputs" and d["model"]["path"] == str(model_file)
    assert d["suspect"] == str(npz) and d["verdict"]["flagged"] == sum(d["flagged"])
    assert [m["method"] for m in d["results"]] == ["kde", "mutation"]
    kde = d["results"][0]
    assert len(kde["scores"]) == 12 and len(kde["flags"]) == 12
    assert all(f == (s > kde["threshold"]) for s, f in zip(kde["scores"], kde["flags"], strict=True))
    # in the order of the inputs: the triggered second half scores above the clean first half
    assert min(kde["scores"][6:]) > max(kde["scores"][:6])
    assert d["results"][1]["params"]["n_mutants"] == 20


def test_cli_inputs_folder_and_errors(backdoor, model_file, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    x = backdoor["trigger"].apply(backdoor["test"].x[:3])
    for i, im in enumerate(x):
        Image.fromarray((im[0] * 255).round().byte().numpy(), mode="L").save(folder / f"{i}.png")
    runner = CliRunner()
    r = runner.invoke(app, ["inputs", str(model_file), "--data", "digits", "--suspect", str(folder),
                            "--method", "kde", "--n-clean", "20"])
    assert r.exit_code in (0, 1), r.output + repr(r.exception)
    assert "0.png" in r.output
    r = runner.invoke(app, ["inputs", str(model_file), "--suspect", str(folder), "--method", "magic"])
    assert isinstance(r.exception, ts.InputError) and "available" in str(r.exception)
    r = runner.invoke(app, ["inputs", str(model_file), "--suspect", str(folder), "--method", "kde",
                            "--param", "kde"])
    assert isinstance(r.exception, ts.InputError) and "METHOD.KEY=VALUE" in str(r.exception)
