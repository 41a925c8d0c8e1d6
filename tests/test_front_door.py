"""The front door: ``scan_model`` and ``trojanscope scan`` with --method auto, the sanity gate,
exit codes, ``--config``, ``trojanscope list`` and ``--version``, progress lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from trojanscope.cli.main import app
from trojanscope.errors import InputError
from trojanscope.models import create_model, save_model, wrap_model
from trojanscope.report.schema import validate

SRC = Path(__file__).resolve().parents[1] / "src"

NC_QUICK_TOML = """
[neural_cleanse]
epochs = 60
steps_per_epoch = 3
batch_size = 24
patience = 3
early_stop_patience = 6
init_cost = 0.01
"""


@pytest.fixture(scope="module")
def files(backdoor, tmp_path_factory):
    d = tmp_path_factory.mktemp("front")
    save_model(backdoor["backdoored"], d / "bd.safetensors")
    save_model(backdoor["clean"], d / "clean.safetensors")
    (d / "nc.toml").write_text(NC_QUICK_TOML)
    return d


@pytest.fixture(scope="module")
def needs_255(backdoor, tmp_path_factory):
    """A small CNN trained on digits given as 0-255 values (x * 255), saved with that
    normalisation in its sidecar (mean 0, std 1/255)."""
    from trojanscope.train import train

    torch.manual_seed(0)
    train_d = backdoor["train"]
    net = create_model("small_cnn", 10, train_d.in_shape)
    model = wrap_model(net, mean=[0.0], std=[1 / 255], num_classes=10, in_shape=train_d.in_shape,
                       arch="small_cnn", detect_probabilities=False)
    train(model, train_d, epochs=8, lr=1e-4, seed=0)  # 0-255 inputs: a small step
    path = tmp_path_factory.mktemp("gate") / "needs255.safetensors"
    save_model(model, path, metadata={"dataset": "digits"})
    return path


# ---------------------------------------------------------------------------- sanity gate

def test_sanity_gate_names_the_missing_convention(needs_255, files):
    """Scanned without the normalisation it needs (--normalize 0/1 overrides the sidecar), the
    model fails the gate; the scan is inconclusive (exit 3), no detector runs, and the hint names
    0-255 with the --normalize value that fixes it."""
    js = files / "gate.json"
    res = CliRunner().invoke(app, ["scan", str(needs_255), "--normalize", "0/1", "--device", "cpu",
                                   "--method", "neural_cleanse", "--json", str(js)])
    assert res.exit_code == 3, res.output
    assert "INCONCLUSIVE" in res.output and "sanity gate FAILED" in res.output
    assert "0-255" in res.output and "--normalize 0/0.003922" in res.output
    d = json.loads(js.read_text())
    validate(d)
    assert d["verdict"]["verdict"] == "inconclusive" and d["verdict"]["exit_code"] == 3
    gate = d["sanity"]
    assert not gate["passed"] and gate["accuracy"] < gate["min_accuracy"] and gate["fits"] == "0-255"
    assert gate["conventions"][0]["name"] == "0-255" and gate["conventions"][0]["accuracy"] > 0.8
    assert d["methods"][0]["status"] == "skipped" and d["methods"][0]["result"] is None
    assert d["data"]["name"] == "digits"  # from the sidecar: no --data given


def test_sanity_gate_passes_with_the_sidecar_normalisation(needs_255, backdoor):
    from trojanscope.models import load_model
    from trojanscope.workflows import sanity_check

    few = backdoor["train"].clean_subset(20, seed=0)
    ok = sanity_check(load_model(needs_255), few)
    assert ok.passed and ok.accuracy > 0.8 and ok.hint is None
    # far below the recorded accuracy also fails, even above chance
    low = sanity_check(load_model(needs_255), few, recorded_accuracy=1.0, max_drop=0.0)
    assert low.passed == (low.accuracy >= low.min_accuracy)
    assert low.min_accuracy > 0.9


def test_sanity_gate_catches_a_wrong_convention_above_chance(backdoor):
    """A network fed the wrong input convention may still beat chance (real CIFAR-10: a
    vgg_small expecting [-1, 1] classified 41.5% of [0, 1] images against 77%), so the chance
    floor alone passes it. The gate compares conventions, fails, and names [-1, 1].

    The network is a lookup over the 200 scan images, so its accuracy under every convention is
    exact on any CPU: all correct on [-1, 1] input, 60% correct on the [0, 1] images as fed."""
    from trojanscope.workflows import sanity_check, scan_model

    few = backdoor["train"].clean_subset(20, seed=0)
    k = 10

    class LookupExpectingPlusMinusOne(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("keys", few.x.flatten(1) * 2 - 1)  # the images in [-1, 1]
            self.register_buffer("labels", few.y.clone())

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            flat = z.flatten(1)
            right = torch.cdist(flat, self.keys).min(1)  # [-1, 1] input: an exact match
            fed = torch.cdist(flat * 2 - 1, self.keys).min(1)  # [0, 1] input, as a user feeds it
            idx = torch.where(right.values < 1e-3, right.indices, fed.indices)
            label = self.labels[idx]
            wrong = (right.values >= 1e-3) & (idx >= int(0.6 * len(self.labels)))
            return F.one_hot(torch.where(wrong, (label + 1) % k, label), k).float() * 10

    model = LookupExpectingPlusMinusOne()
    gate = sanity_check(model, few)
    assert gate.accuracy == pytest.approx(0.6) and gate.accuracy > gate.chance + 0.25 * (1 - gate.chance)
    assert not gate.passed and gate.fits == "[-1, 1]" and gate.conventions[0]["accuracy"] == 1.0
    assert "--normalize 0.5/0.5" in (gate.hint or "") and "another input convention" in gate.reason
    rep = scan_model(model, few, ["neural_cleanse"], seed=0)
    assert rep.verdict.verdict == "inconclusive" and rep.exit_code == 3
    assert rep.methods[0].status == "skipped"
    # a model fed right passes, even where another convention ties with it (ReLU nets without
    # much bias barely notice 0-255)
    assert sanity_check(backdoor["clean"], few).passed


# ----------------------------------------------------------------------- verdicts and exits

def test_exit_codes_backdoored_and_clean_with_config(files, backdoor):
    """exit 1 with the right target on the backdoored model, 0 on its clean twin; the quick
    Neural Cleanse settings come from a TOML file (--config) and show in the report."""
    js = files / "bd_report.json"
    args = ["--data", "digits", "--method", "neural_cleanse", "--device", "cpu", "--alpha", "0.1",
            "--config", str(files / "nc.toml")]
    bd = CliRunner().invoke(app, ["scan", str(files / "bd.safetensors"), *args, "--json", str(js)])
    assert bd.exit_code == 1, bd.output
    assert f"target class {backdoor['target']}" in bd.output
    d = json.loads(js.read_text())
    validate(d)
    assert d["verdict"]["verdict"] == "backdoored" and d["verdict"]["target"] == backdoor["target"]
    assert d["verdict"]["supporting"] == ["neural_cleanse"] and d["verdict"]["rule"] == "cauchy"
    assert d["parameters"]["method_params"]["neural_cleanse"]["epochs"] == 60
    assert d["sanity"]["passed"] and d["timings"]["methods"]["neural_cleanse"] > 0
    # --set wins over the file
    cl = CliRunner().invoke(app, ["scan", str(files / "clean.safetensors"), *args,
                                  "--set", "neural_cleanse.epochs=61", "--json", str(files / "cl_report.json")])
    assert cl.exit_code == 0, cl.output
    assert "verdict: CLEAN" in cl.output
    assert json.loads((files / "cl_report.json").read_text())["parameters"]["method_params"]["neural_cleanse"]["epochs"] == 61


def test_report_may_not_replace_the_models_sidecar(files):
    res = CliRunner().invoke(app, ["scan", str(files / "bd.safetensors"), "--data", "digits",
                                   "--json", str(files / "bd.json")])
    assert isinstance(res.exception, InputError) and "input of this command" in str(res.exception)
    assert json.loads((files / "bd.json").read_text())["arch"] == "small_cnn"


def test_error_is_exit_2_with_one_line(files):
    env = {**os.environ, "PYTHONPATH": str(SRC), "TROJANSCOPE_NO_SANDBOX": "1"}
    p = subprocess.run([sys.executable, "-m", "trojanscope", "scan", str(files / "bd.safetensors"),
                        "--data", "digits", "--set", "neural_cleanse.epoch=5"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "error:" in p.stderr and "no parameter 'epoch'" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("text, msg", [
    ("epochs = 5\n", "must be a \\[epochs\\] table"),
    ("[neural_cleanse\n", "not valid TOML"),
    ("[no_such]\nx = 1\n", "unknown method"),
])
def test_bad_config_files(files, tmp_path, text, msg):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["scan", str(files / "bd.safetensors"), "--data", "digits", "--config", str(cfg)])
    assert isinstance(res.exception, InputError) and re.search(msg, str(res.exception))


# ------------------------------------------------------------------------- auto selection

def test_auto_selection_is_registry_driven():
    from trojanscope.workflows import select_methods

    ctx = {"gradients": True, "data": True, "reference": None, "ulp": None, "in_shape": (1, 16, 16),
           "num_classes": 10}
    sel, skipped = select_methods("auto", ctx)
    why = {s["method"]: s["why"] for s in skipped}
    assert {"neural_cleanse", "lred"} <= set(sel)
    assert "bias_maps" not in sel and "--reference" in why["bias_maps"]
    assert "ulp" not in sel and "--ulp" in why["ulp"]
    assert "lred_perceptible" not in sel and "experimental" in why["lred_perceptible"]
    assert set(sel) | set(why) == set(__import__("trojanscope").available("model_detector"))
    # a reference model enables bias maps; a forward-only model leaves no gradient method
    assert "bias_maps" in select_methods("auto", {**ctx, "reference": object()})[0]
    fwd, _ = select_methods("auto", {**ctx, "gradients": False})
    assert "neural_cleanse" not in fwd and "lred" not in fwd
    # data-free methods alone when there are no clean images
    from trojanscope import get

    nodata, _ = select_methods("auto", {**ctx, "data": False})
    assert all(not get("model_detector", m).needs_data for m in nodata)


def test_scan_model_library_report(backdoor, clean_few):
    from trojanscope import ScanReport, scan_model

    seen: list[dict] = []
    rep = scan_model(backdoor["backdoored"], clean_few, "neural_cleanse", alpha=0.1,
                     params={"neural_cleanse": {"epochs": 60, "steps_per_epoch": 3, "batch_size": 24,
                                                "patience": 3, "early_stop_patience": 6, "init_cost": 0.01}},
                     progress=seen.append)
    assert isinstance(rep, ScanReport) and rep.exit_code == 1 and rep.verdict.target == backdoor["target"]
    d = rep.to_dict()
    validate(d)
    assert {"model", "data", "parameters", "versions", "timings"} <= set(d)
    assert d["methods"][0]["calibration"].startswith("empirical null")
    stages = [p.get("stage") for p in seen]
    assert stages[0] == "sanity" and "method" in stages and stages[-1] == "done"
    assert any("epoch" in p and p.get("method") == "neural_cleanse" for p in seen)



def test_keep_going_records_a_named_method_that_fails(backdoor, clean_few):
    """A named method that fails is an error by default; with keep_going (the demo) it is
    recorded, and a verdict without evidence is inconclusive, never clean."""
    from trojanscope import scan_model

    bad = {"bias_maps": {"eps": 5.0}}  # eps must be in (0, 1]: the scan raises an InputError
    with pytest.raises(InputError, match="bias_maps"):
        scan_model(backdoor["backdoored"], clean_few, ["bias_maps"], params=bad)
    rep = scan_model(backdoor["backdoored"], clean_few, ["bias_maps"], params=bad, keep_going=True)
    (run,) = rep.methods
    assert run.status == "failed" and "eps" in run.error
    assert rep.verdict.verdict == "inconclusive" and rep.exit_code == 3
    validate(rep.to_dict())


# --------------------------------------------------------------- list, version, progress

def test_list_methods_with_parameters_and_defaults():
    res = CliRunner().invoke(app, ["list", "methods"])
    assert res.exit_code == 0, res.output
    assert "neural_cleanse (auto)" in res.output and "epochs = 60" in res.output
    assert "lred_perceptible (experimental" in res.output and "mutation" in res.output
    js = CliRunner().invoke(app, ["list", "architectures", "--json"])
    arch = json.loads(js.output)["architectures"]
    assert any(a["name"] == "borji_cnn" for a in arch)
    for kind in ("datasets", "triggers"):
        assert CliRunner().invoke(app, ["list", kind]).exit_code == 0
    bad = CliRunner().invoke(app, ["list", "nothing"])
    assert isinstance(bad.exception, InputError)


def test_list_shows_the_allowed_values_from_the_constraints():
    """Each parameter's allowed values come from the same ``parameter_constraints`` that
    ``validate_params`` checks, for every kind that has them."""
    import trojanscope as ts
    from trojanscope._params import describe_briefly

    res = CliRunner().invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    lines = [" ".join(line.split()) for line in res.output.splitlines()]
    for line in ("lr = 0.1 (> 0)", "variant = 'A' (one of A, U, P)", "epochs = 60 (int >= 1)",
                 "n_per_class = 8 (int >= 1 or None)", "alpha = 0.1 (in [0, 1])", "eps = 0.3 (> 0 or inf)",
                 "random_start = True (true/false)", "trigger_source = 'reversed' (one of reversed, true, clean)"):
        assert line in lines, line
    js = json.loads(CliRunner().invoke(app, ["list", "--json"]).output)
    for kind, rows in js.items():
        for row in rows:
            cls = ts.get(row["kind"], row["name"])
            table = getattr(cls, "all_parameter_constraints", dict)()
            for p in row["parameters"]:
                want = describe_briefly(table[p["name"]]) if p["name"] in table else None
                assert p["allowed"] == want, (kind, row["name"], p)
    assert any(p["allowed"] for p in js["triggers"][0]["parameters"])
    assert any(p["allowed"] for p in js["evasion"][0]["parameters"])


def test_version():
    from trojanscope import __version__

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"trojanscope {__version__}"


def test_progress_lines_when_not_a_terminal():
    from io import StringIO

    from rich.console import Console

    from trojanscope.cli._options import progress_reporter

    buf = StringIO()
    con = Console(file=buf, soft_wrap=True)
    with progress_reporter("scanning m", console=con, terminal=False, every=1e9) as prog:
        prog({"stage": "sanity", "n_images": 200})
        prog({"stage": "method", "method": "lred", "index": 1, "total": 2})
        prog({"method": "lred", "epoch": 1, "epochs": 9})
        prog({"method": "lred", "epoch": 2, "epochs": 9})  # throttled
        prog({"stage": "done", "verdict": "clean"})
    lines = buf.getvalue().splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d ", ln) for ln in lines)
    assert len(lines) == 5 and "epoch 1/9" in lines[3] and lines[-1].endswith("done: clean")


def test_one_set_syntax_for_mitigate(tmp_path):
    from trojanscope.cli._options import mitigation_settings, parse_sets

    assert parse_sets(["a.b-c=1,2", "a.d=none", "x.y=true", "x.z=0.5", "x.w=word"]) == {
        "a": {"b_c": [1, 2], "d": None}, "x": {"y": True, "z": 0.5, "w": "word"}}
    cfg = tmp_path / "m.toml"
    cfg.write_text("[unlearn]\nepochs = 3\n[neural_cleanse]\nepochs = 40\n")
    mit, scan = mitigation_settings(["unlearn.epochs=4", "stamp_fraction=0.2"], cfg,
                                    mitigation="unlearn", scan_method="neural_cleanse")
    assert mit == {"epochs": 4, "stamp_fraction": 0.2} and scan == {"epochs": 40}
    with pytest.raises(InputError, match="mitigate takes settings"):
        mitigation_settings(["lred.pi=0.5"], None, mitigation="unlearn", scan_method="neural_cleanse")


def test_settings_are_typed_for_each_method_by_its_constraints(tmp_path):
    """``--set`` and the TOML file go through the same typing as ``--attack-param``: a whole
    number written as a float becomes the int the constraint asks for; a real fraction stays and
    is refused by the method's own check."""
    from trojanscope.cli._options import mitigation_settings, settings

    cfg = tmp_path / "s.toml"
    cfg.write_text("[lred]\nn_per_class = 4.0\n")
    got = settings(["neural_cleanse.epochs=50.0", "neural_cleanse.lr=0.5"], cfg, kind="model_detector")
    assert got == {"neural_cleanse": {"epochs": 50, "lr": 0.5}, "lred": {"n_per_class": 4}}
    assert isinstance(got["neural_cleanse"]["epochs"], int)
    assert settings(["neural_cleanse.epochs=50.5"], None, kind="model_detector") == {
        "neural_cleanse": {"epochs": 50.5}}
    mit, scan = mitigation_settings(["unlearn.min_steps=40.0", "unlearn.epochs=2.0",
                                     "neural_cleanse.epochs=9.0"], None,
                                    mitigation="unlearn", scan_method="neural_cleanse")
    assert isinstance(mit["min_steps"], int) and isinstance(mit["epochs"], float)  # float allowed
    assert scan == {"epochs": 9} and isinstance(scan["epochs"], int)
    import trojanscope as ts

    with pytest.raises(InputError, match="epochs"):
        ts.create("model_detector", "neural_cleanse", epochs=50.5).validate_params()


# ------------------------------------------------------------------ memory layout of a scan

QUICK_NC = {"epochs": 60, "steps_per_epoch": 3, "batch_size": 24, "patience": 3, "early_stop_patience": 6,
            "init_cost": 0.01}


def _conv_strides_seen(model: torch.nn.Module) -> tuple[list, list]:
    """A forward hook on every Conv2d recording its weight's strides while the scan runs."""
    seen: list = []
    hooks = [m.register_forward_pre_hook(lambda mod, _x: seen.append(mod.weight.stride()))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, hooks


def test_channels_last_scan_same_verdict_and_model_left_as_it_was(backdoor, clean_few):
    """``layout="auto"`` runs a CNN on a CPU in channels-last memory (the speed lever of issue
    16): the verdict and target are those of the contiguous run, and the model comes back with
    the same parameter objects, values and strides."""
    from trojanscope import scan_model

    model = backdoor["backdoored"]
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    reps = {}
    for layout in ("auto", "contiguous"):
        seen, hooks = _conv_strides_seen(model)
        reps[layout] = scan_model(model, clean_few, "neural_cleanse", layout=layout, seed=0, alpha=0.1,
                                  params={"neural_cleanse": QUICK_NC})
        for h in hooks:
            h.remove()
        cl = [s[1] == 1 for s in seen]  # channels-last: the input channels are innermost
        if layout == "auto":  # from the sanity gate on (the class-count probe runs before)
            assert True in cl and all(cl[cl.index(True):])
        else:
            assert seen and not any(cl)
        assert reps[layout].parameters["layout"] == ("channels_last" if layout == "auto" else "contiguous")
        now = model.state_dict()
        assert all(torch.equal(now[k], v) and now[k].stride() == s for k, (v, s) in before.items())
        assert [id(p) for p in model.parameters()] == params
    a, c = reps["auto"].verdict, reps["contiguous"].verdict
    assert a.verdict == c.verdict == "backdoored" and a.target == c.target == backdoor["target"]


def test_memory_layout_restores_on_error_and_refuses_unknown_layouts():
    from trojanscope._runtime import memory_layout, resolve_layout

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
    w = net[0].weight
    ptr, stride, values = w.data_ptr(), w.stride(), w.detach().clone()
    with pytest.raises(ZeroDivisionError), memory_layout(net, "channels_last"):
        assert w.stride()[1] == 1 and w.data_ptr() != ptr  # one input channel still gets the layout
        1 / 0  # noqa: B018
    assert w.data_ptr() == ptr and w.stride() == stride and torch.equal(w, values)
    assert resolve_layout(torch.nn.Linear(3, 2)) == "contiguous"  # nothing to gain without 4-D weights
    assert resolve_layout(net) == "channels_last"
    with pytest.raises(InputError, match="unknown layout"):
        resolve_layout(net, "nhwc")
    res = CliRunner().invoke(app, ["scan", "whatever.safetensors", "--layout", "nhwc"])
    assert isinstance(res.exception, InputError) and "--layout must be one of" in str(res.exception)
