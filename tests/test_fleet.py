"""``trojanscope scan-many``: a tiny fleet on the local executor and on a local Ray runtime, the
resumable results file, and the summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trojanscope.fleet import FleetJob, discover, read_results, scan_many
from trojanscope.report.fleet import roc

SRC = str(Path(__file__).resolve().parents[1] / "src")
# a deliberately small scan: these tests check the fleet machinery, not the detector
FAST = dict(method="neural_cleanse", sets=["neural_cleanse.epochs=2"], extra=["--n-per-class", "5"])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def fleet(backdoor, tmp_path_factory) -> Path:
    """Two models and a broken file, with a manifest holding the ground truth."""
    from trojanscope.models import save_model

    d = tmp_path_factory.mktemp("fleet")
    shape = backdoor["train"].in_shape
    save_model(backdoor["backdoored"], d / "bd.safetensors", in_shape=shape)
    save_model(backdoor["clean"], d / "clean.safetensors", in_shape=shape)
    (d / "broken.pt2").write_bytes(b"PK\x03\x04 this is not a model")
    (d / "manifest.csv").write_text(f"model,backdoored,target\nbd.safetensors,true,{backdoor['target']}\n"
                                    "clean.safetensors,false,\nbroken.pt2,,\n")
    return d


def _rows(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = [json.loads(ln) for ln in lines]
    assert len({r["model"] for r in rows}) == len(rows), "a model appears twice"
    return {r["model"]: r for r in rows}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for m in a:
        for k in ("verdict", "backdoored", "target", "p_value", "exit_status", "error"):
            assert a[m].get(k) == b[m].get(k), (m, k, a[m].get(k), b[m].get(k))


def test_discover_directory_and_manifest(fleet, tmp_path):
    assert [m.model for m in discover(fleet)] == ["bd.safetensors", "broken.pt2", "clean.safetensors"]
    ms = discover(fleet / "manifest.csv")
    assert [(m.model, m.truth, m.true_target) for m in ms] == [
        ("bd.safetensors", True, 0), ("clean.safetensors", False, None), ("broken.pt2", None, None)]
    bad = tmp_path / "bad.csv"
    bad.write_text("model,backdoored\na.pt2,maybe\n")
    from trojanscope.errors import InputError

    with pytest.raises(InputError, match="ground truth"):
        discover(bad)


def test_local_and_ray_give_the_same_rows(fleet, tmp_path):
    ray = pytest.importorskip("ray")
    job = FleetJob(data="digits", **FAST)
    local = scan_many(fleet / "manifest.csv", tmp_path / "local", job, executor="local", workers=2)
    assert local.scanned == 3 and local.verdicts.get("error") == 1
    rows = _rows(tmp_path / "local")
    assert rows["broken.pt2"]["verdict"] == "error" and "zip" in rows["broken.pt2"]["error"]
    for m in ("bd.safetensors", "clean.safetensors"):
        assert rows[m]["verdict"] in ("clean", "backdoored", "inconclusive")
        assert rows[m]["error"] is None and rows[m]["seconds"] > 0
        assert (tmp_path / "local" / rows[m]["report"]).is_file()
    assert rows["bd.safetensors"]["truth"] is True
    summary = (tmp_path / "local" / "summary.html").read_text()
    assert "ground truth" in summary and "broken.pt2" in summary
    assert f"backdoored -&gt; {rows['bd.safetensors']['true_target']}" in summary  # the truth column
    try:
        via_ray = scan_many(fleet / "manifest.csv", tmp_path / "ray", job, executor="ray", workers=2)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert via_ray.verdicts == local.verdicts
    _same(rows, _rows(tmp_path / "ray"))
    # a second run resumes: nothing is scanned again
    again = scan_many(fleet / "manifest.csv", tmp_path / "local", job, executor="local", workers=2)
    assert again.scanned == 0 and again.skipped == 3
    _same(rows, _rows(tmp_path / "local"))


def test_sigkill_loses_nothing_on_resume(fleet, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trojanscope", "scan-many", str(fleet), "--out", str(out),
           "--workers", "1", "--method", FAST["method"], "--set", FAST["sets"][0],
           "--scan-arg=--n-per-class", "--scan-arg=5"]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "results.jsonl").is_file():
        time.sleep(0.2)
    assert (out / "results.jsonl").is_file(), "no model finished"
    os.killpg(p.pid, signal.SIGKILL)  # the driver and its scan in flight
    p.wait()
    first = _rows(out)
    assert 1 <= len(first) < 3
    with (out / "results.jsonl").open("ab") as f:
        f.write(b'{"model": "half-writ')  # what a kill in the middle of a write leaves
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode in (1, 3), done.stderr  # the broken file is an error row: 3 at least
    assert "resumed: " in done.stderr
    rows = _rows(out)
    assert sorted(rows) == ["bd.safetensors", "broken.pt2", "clean.safetensors"]
    for m, r in first.items():
        assert rows[m] == r, "a finished model was scanned again"


def test_torn_last_line_is_dropped(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_bytes(b'{"model": "a", "verdict": "clean"}\n{"model": "b", "verd')
    assert list(read_results(p)) == ["a"]
    assert p.read_bytes().endswith(b"}\n")


def test_roc_auc_counts_ties_half():
    rows = [{"truth": True, "p_value": 0.01}, {"truth": True, "p_value": 0.5},
            {"truth": False, "p_value": 0.5}, {"truth": False, "p_value": 0.9},
            {"truth": None, "p_value": 0.0}, {"truth": True, "verdict": "error"}]
    _, auc = roc(rows)
    assert auc == pytest.approx((1 + 1 + 0.5 + 1) / 4)
