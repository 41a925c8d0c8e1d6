"""The README's main job, end to end: ``trojanscope demo`` and ``trojanscope mitigate``."""

from __future__ import annotations

import json
import os
import shutil

from typer.testing import CliRunner

from trojanscope.cli.main import app
from trojanscope.report.schema import validate

runner = CliRunner()


def test_demo_end_to_end(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["schema"] == 1 and rep["models"]["backdoored"]["asr"] > 0.9
    assert rep["models"]["clean"]["asr"] < 0.2
    scans = {(s["method"], s["model"]): s for s in rep["model_scans"]}
    nc_bd, nc_cl = scans[("neural_cleanse", "backdoored")], scans[("neural_cleanse", "clean")]
    assert nc_bd["backdoored"] and nc_bd["target"] == rep["demo"]["target"]
    assert not nc_cl["backdoored"]
    # the scans go through the workflow (scan_model): one combined verdict per model, the one
    # `trojanscope scan` would give (measured: p = 2e-4 to 2e-5 backdoored). The clean model is
    # never called backdoored; it is "clean" (p 0.97-1.0) on this machine's kernels, but under
    # ATEN_CPU_CAPABILITY=default with one thread L-RED alone reached p = 0.019 on it and the
    # combined verdict was "inconclusive" (split evidence): a real property of L-RED on 16x16
    # digits, not a knife-edge to pin (docs/testing.md)
    v = rep["verdicts"]
    assert v["backdoored"]["verdict"] == "backdoored" and v["backdoored"]["target"] == rep["demo"]["target"]
    assert v["clean"]["verdict"] in ("clean", "inconclusive")
    if v["clean"]["verdict"] == "inconclusive":  # only split evidence, never a combined detection
        assert v["clean"]["p_value"] >= 0.05 and "split" in v["clean"]["reason"]
    assert not [s for s in rep["skipped"] if "error" in s], rep["skipped"]
    # experimental methods run only when named
    assert "lred_perceptible" not in {s["method"] for s in rep["model_scans"]}
    assert any(s["method"] == "lred_perceptible" and "experimental" in s["why"] for s in rep["skipped"])
    assert {r["method"] for r in rep["mitigations"]} == {"filter", "prune", "unlearn"}
    # a repair is judged, never claimed: within the 2-point budget pruning and the filter may
    # honestly come back "ineffective"; whatever says "repaired" must have removed the real trigger
    mit = {r["method"]: r for r in rep["mitigations"]}
    assert all(r["verdict"] in ("repaired", "ineffective", "refused") for r in mit.values())
    assert all(r["asr_true_after"] < 0.3 for r in mit.values() if r["verdict"] == "repaired")
    assert mit["unlearn"]["verdict"] == "repaired"
    page = tmp_path / "report.html"
    text = page.read_text()
    assert page.stat().st_size > 10_000 and 'id="verdict"' in text
    # the reversed trigger of the flagged target, stamped on clean images, predictions before/after
    assert f"The reversed trigger of class {rep['demo']['target']}" in text and "model: " in text
    if shutil.which("chromium") or os.environ.get("CI", "").lower() == "true":
        from test_report_browser import layout  # the demo's page is the first report users see

        got = layout(page, tmp_path, 700)
        assert got["broken_images"] == 0 and got["n_overflow"] == 0, got["overflow"]


def test_mitigate_cli_repairs_and_writes_pt2(tmp_path, backdoor):
    from trojanscope.models import load_model, save_model

    src = tmp_path / "bd.safetensors"
    save_model(backdoor["backdoored"], src, metadata={"attack": {
        "name": "badnets", "params": {"size": 3, "location": "bottom_right", "margin": 1},
        "target": 0, "sources": None}})
    out = tmp_path / "fixed.pt2"
    res = runner.invoke(app, ["mitigate", str(src), "--data", "digits", "--method", "unlearn",
                              "--n-per-class", "60", "--out", str(out), "--json", str(tmp_path / "m.json"),
                              "--scan-set", "epochs=20"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "m.json").read_text())
    validate(doc)  # the shipped repair-report schema
    assert doc["kind"] == "mitigate" and doc["model"]["path"] == str(src)
    r = doc["result"]
    assert r["verdict"] == "repaired" and r["reloaded"]["cta"] > 0.8
    assert r["asr_true_before"] > 0.9 and r["asr_true_after"] < 0.3
    fixed = load_model(out)
    x = backdoor["trigger"].apply(backdoor["test"].of_classes([0], exclude=True).x)
    assert float((fixed(x).argmax(1) == 0).float().mean()) < 0.3


def test_mitigate_cli_bad_method(tmp_path):
    res = runner.invoke(app, ["mitigate", str(tmp_path / "x.safetensors"), "--method", "nope"])
    assert res.exit_code != 0
    # a parameter the repair does not take is named before anything is loaded (no such file here)
    res = runner.invoke(app, ["mitigate", str(tmp_path / "x.safetensors"), "--set", "unlearn.nope=1"])
    assert res.exit_code != 0 and "unlearn has no parameter 'nope'" in str(res.exception)
