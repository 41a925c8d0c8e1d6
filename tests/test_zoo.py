"""Model zoos: deterministic plans with disjoint trigger sets, atomic models, resume, executors."""

from __future__ import annotations

import json

import pytest

from trojanscope.errors import InputError
from trojanscope.zoo import ZooSpec, build_zoo, load_zoo, plan_jobs, trigger_split
from trojanscope.zoo._worker import build_model

TINY = dict(dataset="digits", size=8, trigger_size=3, epochs=6, lr=0.05, min_cta=0.5,
            sources="one", seed=3)


def test_plan_is_deterministic_with_disjoint_triggers():
    spec = ZooSpec(n_clean=30, n_poisoned=40, **TINY)
    jobs = plan_jobs(spec, 10)
    assert [j.to_dict() for j in jobs] == [j.to_dict() for j in plan_jobs(spec, 10)]
    poisoned = [j for j in jobs if j.poisoned]
    assert len(poisoned) == 40 and sum(not j.poisoned for j in jobs) == 30
    train_t = {j.trigger_id for j in poisoned if j.split == "train"}
    test_t = {j.trigger_id for j in poisoned if j.split == "test"}
    assert train_t and test_t and not train_t & test_t  # test models carry unseen triggers
    assert all(trigger_split(t) == "train" for t in train_t)
    assert all(j.source != j.target and j.sources == (j.source,) for j in poisoned)
    assert len({(j.source, j.target) for j in poisoned}) > 10  # random pairs
    # growing the zoo keeps every model already planned
    bigger = plan_jobs(ZooSpec(n_clean=35, n_poisoned=45, **TINY), 10)
    names = {j.name: j for j in bigger}
    assert all(names[j.name] == j for j in jobs)


def test_failed_attack_is_marked_not_kept(tmp_path):
    spec = ZooSpec(n_clean=0, n_poisoned=1, **{**TINY, "min_asr": 1.01})
    job = plan_jobs(spec, 10)[0]
    row = build_model(job.to_dict(), spec.to_dict(), str(tmp_path))
    assert row["status"] == "failed_attack" and row["asr"] is not None
    assert 0 < row["n_poison"] and row["poison_ratio"] == 0.5
    side = json.loads((tmp_path / "models" / f"{job.name}.json").read_text())
    zoo_rows = side["zoo"]
    from trojanscope.models import load_model

    assert load_model(tmp_path / "models" / f"{job.name}.safetensors").num_classes == 10
    assert zoo_rows["status"] == "failed_attack"


def test_interrupted_build_resumes_and_keeps_finished_models(tmp_path):
    spec = ZooSpec(n_clean=3, n_poisoned=3, **TINY)
    seen = []

    def stop_after_two(d):
        seen.append(d["row"]["name"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path, spec, workers=0, progress=stop_after_two)
    files = sorted((tmp_path / "models").glob("*.safetensors"))
    assert [f.stem for f in files] == sorted(seen)
    assert len(json.loads((tmp_path / "manifest.json").read_text())["models"]) == 2
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    # a killed writer leaves a temporary file behind; it must never count as a model
    (tmp_path / "models" / ".clean_00002.abc.safetensors").write_bytes(b"half")
    (tmp_path / "models" / "poisoned_00002.safetensors").write_bytes(b"truncated garbage")

    with pytest.raises(InputError, match="different settings"):
        build_zoo(tmp_path, ZooSpec(n_clean=3, n_poisoned=3, **{**TINY, "poison_ratio": 0.1}))

    progress = []
    zoo = build_zoo(tmp_path, spec, workers=2, progress=progress.append)
    assert len(progress) == 4  # only the missing models were trained
    assert {d["row"]["name"] for d in progress}.isdisjoint(seen)
    assert progress[-1]["done"] == 6 and progress[-1]["models_per_hour"] > 0
    for name, (mtime, data) in before.items():
        f = tmp_path / "models" / name
        assert f.stat().st_mtime_ns == mtime and f.read_bytes() == data
    assert not list((tmp_path / "models").glob(".*"))
    zoo = load_zoo(tmp_path)
    assert len(zoo.rows) == 6
    for r in zoo.rows:
        assert {"arch", "trigger_id", "source", "target", "poison_ratio", "cta", "asr", "seed",
                "status", "split"} <= r.keys()
        assert r["cta"] > 0.5
    poisoned = [r for r in zoo.rows if r["poisoned"]]
    assert all(r["asr"] is not None and r["trigger_id"] is not None for r in poisoned)
    models, labels, rows = zoo.load(ok_only=False)
    assert len(models) == 6 and labels.tolist() == [int(r["poisoned"]) for r in rows]


def test_cli_zoo_build_and_info(tmp_path):
    from typer.testing import CliRunner

    from trojanscope.cli.main import app

    res = CliRunner().invoke(app, ["zoo", "build", "--out", str(tmp_path), "--data", "digits",
                                   "--size", "8", "--trigger-size", "3", "--n-clean", "1",
                                   "--n-poisoned", "1", "--epochs", "4", "--workers", "0",
                                   "--min-cta", "0.5"])
    assert res.exit_code == 0, res.output
    assert "poisoned" in res.output
    assert len(load_zoo(tmp_path).rows) == 2
    res = CliRunner().invoke(app, ["zoo", "info", str(tmp_path)])
    assert res.exit_code == 0 and "clean" in res.output


@pytest.mark.ray
def test_ray_executor(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        zoo = build_zoo(tmp_path, ZooSpec(n_clean=1, n_poisoned=1, **TINY), workers=1,
                        executor="ray")
    finally:
        ray.shutdown()
    assert len(zoo.rows) == 2 and {r["poisoned"] for r in zoo.rows} == {False, True}
    assert len(list((tmp_path / "models").glob("*.safetensors"))) == 2
