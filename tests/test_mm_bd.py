"""MM-BD (Wang, Xiang, Miller & Kesidis, S&P 2024): data-free scans of tiny real models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_unchanged, state_snapshot
from torch import nn

import trojanscope as ts
from trojanscope.attacks import AdditiveTrigger, BlendTrigger, PoisoningAttack
from trojanscope.data import load_dataset
from trojanscope.detectors.model.mm_bd import MMBD, margins
from trojanscope.metrics import attack_success_rate
from trojanscope.models import create_model
from trojanscope.train import train

FAST = dict(restarts=10, steps=150)
SHAPE = (1, 16, 16)


def _scan(model, **kw):
    return MMBD(**{**FAST, **kw}).scan(model, in_shape=SHAPE)


@pytest.fixture(scope="module")
def other_triggers():
    """16x16 digits, small_cnn: a blended noise key (alpha 0.2) -> 3 and a global additive
    chessboard (+-0.15, not quantised) -> 7, all classes poisoned at 10%."""
    tr = load_dataset("digits", "train", size=16)
    te = load_dataset("digits", "test", size=16)
    out = {}
    for name, trig, target in (("blend", BlendTrigger(image="noise", alpha=0.2), 3),
                               ("additive", AdditiveTrigger(pattern="chessboard", amplitude=0.15,
                                                            quantize=False), 7)):
        poisoned, _ = PoisoningAttack(trigger=trig, target=target, rate=0.1, seed=0).poison_data(tr)
        torch.manual_seed(0)
        m = create_model("small_cnn", 10, tr.in_shape)
        train(m, poisoned, epochs=15, lr=0.05, seed=0)
        out[name] = (m, trig, target, te)
    return out


def test_margins_definition():
    z = torch.tensor([[3.0, 1.0, -2.0], [0.0, 5.0, 4.0]])
    assert margins(z, torch.tensor([0, 2])).tolist() == [2.0, -1.0]


def test_flags_patch_backdoor_with_no_data(backdoor):
    model = backdoor["backdoored"]
    snap = state_snapshot(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    r = _scan(model)
    assert_unchanged(model, snap)
    assert all(p.requires_grad for p in model.parameters())
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad)
               for g, p in zip(grads, model.parameters(), strict=True))
    assert r.method == "mm_bd" and r.backdoored and r.p_value < 0.05
    assert r.target == backdoor["target"] == 0
    mm = torch.tensor(r.per_class["max_margin"], dtype=torch.float64)
    assert int(mm.argmax()) == 0 and r.statistic == pytest.approx(float(mm[0]))
    x = r.trigger["max_margin_input"]
    assert x.shape == (10, *SHAPE) and float(x.min()) >= 0 and float(x.max()) <= 1
    # the stored inputs are real witnesses: the model reaches the reported margin on them
    with torch.no_grad():
        got = margins(model(x), torch.arange(10))
    assert torch.allclose(got.double(), mm, rtol=1e-4, atol=1e-3)
    steps = r.extra["steps_done"]
    assert 0 < steps <= FAST["steps"]
    # every start for the first prune_after steps, then only the `keep` best of each class
    det = MMBD(**FAST)
    assert det.keep is not None and det.keep < FAST["restarts"] and det.prune_after < steps
    expect = 10 * (det.prune_after * FAST["restarts"] + (steps - det.prune_after) * det.keep)
    assert r.extra["gradient_evaluations"] == expect == r.extra["work"]["images_with_gradient"]
    assert r.extra["clean_images"] == 0 and r.seconds > 0
    assert r.to_dict()["trigger"] == {"max_margin_input": [10, *SHAPE]}


def test_pruning_to_the_best_starts_keeps_the_statistic(backdoor):
    """Pruning to the most promising starts (``keep``) finds the same target, with the target's
    margin within 10% of optimising every start to the end, for a fraction of the gradient work.

    Adam is elementwise and the margin separable per image, so a kept start follows the same
    path as in the full run: pruning can only lose margin (a dropped start that would have won),
    never invent it."""
    full = _scan(backdoor["backdoored"], keep=None)
    pruned = _scan(backdoor["backdoored"], keep=2, prune_after=10)
    assert full.backdoored and pruned.backdoored and pruned.target == full.target == 0
    a, b = (torch.tensor(r.per_class["max_margin"]) for r in (full, pruned))
    assert (b <= a * (1 + 1e-3) + 1e-3).all(), (a, b)
    assert float(b[0]) > 0.9 * float(a[0])
    assert pruned.extra["gradient_evaluations"] < 0.4 * full.extra["gradient_evaluations"]
    # a pruned start keeps the best margin it reached: every start still has one
    assert torch.isfinite(torch.tensor(pruned.per_class["median_margin_over_starts"])).all()


def test_clean_twin_not_flagged(backdoor):
    r = _scan(backdoor["clean"])
    assert not r.backdoored and r.p_value >= 0.05 and r.target is None


@pytest.mark.parametrize("kind", ["blend", "additive"])
def test_flags_blended_and_additive_triggers(other_triggers, kind):
    model, trig, target, te = other_triggers[kind]
    assert attack_success_rate(model, te, trig, target)["asr"] > 0.9  # the attack is real
    r = _scan(model)
    assert r.backdoored and r.p_value < 0.05 and r.target == target


def test_seeded_and_same_verdict_with_data(backdoor, clean_few):
    model = backdoor["backdoored"]
    a, b = _scan(model), _scan(model)
    assert a.per_class["max_margin"] == b.per_class["max_margin"]
    with_data = MMBD(**FAST).scan(model, clean_few)  # data given: only its shape is used
    assert with_data.per_class["max_margin"] == a.per_class["max_margin"]
    assert with_data.extra["clean_images"] == 0


def test_probability_output_model_is_not_judged(backdoor):
    """Softmax outputs cap every margin at -log(eps) of the log wrapper: MM-BD says it cannot
    judge instead of calling the backdoored model clean."""
    probs = nn.Sequential(copy.deepcopy(backdoor["backdoored"]), nn.Softmax(dim=1))
    r = _scan(probs)
    assert not r.backdoored and r.target is None and r.p_value is None  # no valid p-value
    assert "logits" in r.extra["inconclusive"]
    from trojanscope.models import (
        wrap_model,  # a loaded model file: the log sits inside the wrapper
    )

    wrapped = wrap_model(probs, num_classes=10, in_shape=SHAPE)
    assert "logits" in _scan(wrapped).extra["inconclusive"]
    assert "inconclusive" not in _scan(backdoor["backdoored"]).extra


def test_data_free_scan_errors(backdoor):
    model = backdoor["backdoored"]
    with pytest.raises(ts.InputError, match="needs clean images"):
        ts.get("model_detector", "neural_cleanse")().scan(model, in_shape=SHAPE)
    assert MMBD(restarts=2, steps=2).scan(model).extra["in_shape"] == list(SHAPE)  # model.in_shape
    plain = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(ts.InputError, match="input shape"):
        MMBD(**FAST).scan(plain)
    with pytest.raises(ts.InputError, match="10 classes"):
        MMBD(**FAST).scan(model, in_shape=SHAPE, num_classes=43)
    with pytest.raises(ts.InputError, match="cannot process"):
        MMBD(**FAST).scan(model, in_shape=(3, 16, 16))
    with pytest.raises(ts.InputError, match="optimizer"):
        MMBD(optimizer="lbfgs").scan(model, in_shape=SHAPE)
    with pytest.raises(ts.InputError, match="at least 3 classes"):
        MMBD(**FAST).scan(nn.Sequential(nn.Flatten(), nn.Linear(256, 2)), in_shape=SHAPE)


def test_scan_model_without_data_runs_only_data_free_methods(backdoor, tmp_path):
    """The workflow behind `trojanscope scan --data none`: auto selects MM-BD (ULP needs a
    file), the class count is probed, and the report says the sanity gate could not run."""
    from trojanscope.workflows import scan_model

    rep = scan_model(backdoor["backdoored"], None, "auto", params={"mm_bd": FAST},
                     in_shape=SHAPE)
    ran = [m.method for m in rep.methods if m.status == "ok"]
    assert ran == ["mm_bd"]
    assert {m.method for m in rep.methods if m.status == "skipped"} >= {"neural_cleanse", "lred", "ulp"}
    assert rep.verdict.verdict == "backdoored" and rep.verdict.target == 0
    assert rep.sanity is None
    d = rep.to_dict()
    assert "could not be measured" in d["data"]["sanity_gate"]
    assert d["data"]["n_images"] == 0 and d["data"]["num_classes"] == 10
    from trojanscope.report.schema import validate

    validate(d)  # the shipped report schema accepts a data-free scan
    # the HTML report shows the optimised inputs (one image per class), inline
    from trojanscope.report.outputs import write_scan_outputs

    html = tmp_path / "r.html"
    write_scan_outputs(rep, model=backdoor["backdoored"], clean=None, html_path=html)
    page = html.read_text()
    assert "mm_bd: max_margin_input per candidate" in page and page.count("data:image/png;base64,") >= 1
    plain = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(ts.InputError, match="in-shape"):
        scan_model(plain, None, "auto")
    with pytest.raises(ts.InputError, match="not the 43 given"):
        scan_model(backdoor["backdoored"], None, "auto", in_shape=SHAPE, num_classes=43)
    with pytest.raises(ts.InputError, match="cannot process"):
        scan_model(backdoor["backdoored"], None, "auto", in_shape=(3, 16, 16))


def test_cli_scan_data_none(backdoor, tmp_path):
    """`trojanscope scan MODEL --data none`: no images, in_shape from the sidecar, exit 1 with
    the target; the JSON report validates and says the sanity gate could not run."""
    import json

    from typer.testing import CliRunner

    from trojanscope.cli.main import app
    from trojanscope.models.io import save_model
    from trojanscope.report.schema import validate

    path = save_model(backdoor["backdoored"], tmp_path / "bd.safetensors")
    quick = ["--set", "mm_bd.restarts=10", "--set", "mm_bd.steps=150"]
    js = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["scan", str(path), "--data", "none", "--device", "cpu",
                                   "--json", str(js), *quick])
    assert res.exit_code == 1, res.output
    assert "BACKDOORED" in res.output and "mm_bd" in res.output and "sanity gate not run" in res.output
    d = json.loads(js.read_text())
    validate(d)
    assert d["verdict"]["verdict"] == "backdoored" and d["verdict"]["target"] == 0
    assert d["data"]["n_images"] == 0 and "could not be measured" in d["data"]["sanity_gate"]
    for extra, msg in ((["--num-classes", "43", *quick], "not the 43 given"),
                       (["--in-shape", "3,x,16", *quick], "--in-shape"),
                       (["--method", "lred"], "needs clean images")):
        bad = CliRunner().invoke(app, ["scan", str(path), "--data", "none", *extra])
        assert isinstance(bad.exception, ts.InputError) and msg in str(bad.exception)  # main: exit 2
