"""Universal Litmus Patterns: trained on a tiny digits zoo, they must rank unseen-trigger
poisoned models above clean ones; the file round-trips and the scan refuses foreign models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_unchanged, state_snapshot

from trojanscope import create
from trojanscope.detectors.model._ulp_train import ModelBatch, pool_logits
from trojanscope.detectors.model.ulp import ULP, load_ulp, train_ulp
from trojanscope.errors import InputError, ModelFileError
from trojanscope.metrics import roc_auc
from trojanscope.zoo import ZooSpec, build_zoo

SPEC = ZooSpec(dataset="digits", size=8, trigger_size=3, n_clean=16, n_poisoned=16, epochs=8,
               lr=0.05, min_cta=0.5, sources="all", seed=1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch.set_num_threads(1)
    return build_zoo(tmp_path_factory.mktemp("zoo"), SPEC, workers=0)


@pytest.fixture(scope="module")
def splits(zoo):
    return zoo.load("train"), zoo.load("test")


@pytest.fixture(scope="module")
def ulp_file(splits, tmp_path_factory):
    (models, labels, _), _ = splits
    ulp = train_ulp(models, labels, num_classes=10, in_shape=(1, 8, 8), dataset="digits8",
                    n_patterns=5, steps=200, seed=0)
    return ulp.save(tmp_path_factory.mktemp("ulp") / "digits8.ulp.safetensors")


def test_ulp_detects_unseen_triggers_and_beats_nothing(splits, ulp_file):
    (tr, ytr, _), (te, yte, rows) = splits
    assert 0 < int(yte.sum()) < len(yte)
    ulp = load_ulp(ulp_file)
    s = ulp.score_models(te)
    auc = roc_auc(s[yte == 0], s[yte == 1])
    assert auc >= 0.8, auc
    s_tr = ulp.score_models(tr)
    assert roc_auc(s_tr[ytr == 0], s_tr[ytr == 1]) >= auc - 1e-6 or auc == 1.0
    assert ulp.patterns.shape == (5, 1, 8, 8)
    assert 0 <= float(ulp.patterns.min()) and float(ulp.patterns.max()) <= 1


def test_scan_matches_batched_scores_and_leaves_model_alone(splits, ulp_file):
    _, (te, yte, _) = splits
    ulp = load_ulp(ulp_file)
    batched = ulp.score_models(te)
    det = create("model_detector", "ulp", ulp_path=str(ulp_file))
    assert isinstance(det, ULP) and det.needs_gradients is False
    from trojanscope.data import load_dataset

    clean = load_dataset("digits", "test", size=8).clean_subset(2)
    for i in (int(torch.nonzero(yte == 0)[0]), int(torch.nonzero(yte == 1)[0])):
        snap = state_snapshot(te[i])
        r = det.scan(te[i], clean)
        assert_unchanged(te[i], snap)
        assert r.method == "ulp" and r.threshold == 0.5
        assert r.statistic == pytest.approx(float(batched[i]), abs=1e-5)
        assert r.backdoored == (r.statistic > 0.5)
        assert r.extra["n_patterns"] == 5
        free = det.scan(te[i], None, in_shape=(1, 8, 8))  # data-free: the patterns are the inputs
        assert free.statistic == pytest.approx(r.statistic, abs=1e-6)
    assert create("model_detector", "ulp", ulp_path=str(ulp_file), threshold=1.0).scan(
        te[0], clean).backdoored is False


def test_noise_input_baseline_keeps_its_random_patterns(splits, tmp_path):
    (tr, ytr, _), _ = splits
    noise = train_ulp(tr, ytr, num_classes=10, in_shape=(1, 8, 8), n_patterns=3, steps=30,
                      noise_input=True, seed=5)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(noise.patterns, torch.rand(3, 1, 8, 8, generator=g))
    back = load_ulp(noise.save(tmp_path / "noise.safetensors"))
    assert back.noise_input and torch.equal(back.patterns, noise.patterns)


def test_batched_forward_and_poolings(splits):
    (tr, _, _), _ = splits
    z = torch.rand(4, 1, 8, 8)
    ref = torch.stack([m(z) for m in tr[:6]])
    got = ModelBatch(tr[:6])(z)
    assert torch.allclose(got, ref, atol=1e-5)
    assert pool_logits(ref, "concat").shape == (6, 40)
    assert torch.equal(pool_logits(ref, "max"), ref.max(1).values)
    assert torch.allclose(pool_logits(ref, "mean"), ref.mean(1))
    assert torch.equal(pool_logits(ref, "concat", sort_logits=True)[:, :10],
                       ref[:, 0].sort(-1, descending=True).values)


def test_refuses_foreign_models_and_bad_files(backdoor, clean_few, ulp_file, tmp_path):
    det = ULP(ulp_path=str(ulp_file))
    with pytest.raises(InputError, match=r"\(1, 8, 8\)"):
        det.scan(backdoor["backdoored"], clean_few)  # a 16x16 model
    from trojanscope.data import load_dataset
    from trojanscope.models import create_model

    five = create_model("small_cnn", 5, (1, 8, 8))
    d8 = load_dataset("digits", "test", size=8)
    with pytest.raises(InputError, match="5 classes"):
        det.scan(five, d8.of_classes([0, 1, 2, 3, 4]).clean_subset(2))
    with pytest.raises(InputError, match="--ulp"):
        ULP().scan(copy.deepcopy(backdoor["clean"]), clean_few)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a ulp file")
    with pytest.raises(ModelFileError):
        ULP(ulp_path=str(bad)).scan(backdoor["clean"], clean_few)
    with pytest.raises(ModelFileError, match="does not exist"):
        ULP(ulp_path=str(tmp_path / "none.safetensors")).scan(backdoor["clean"], clean_few)


def test_cli_ulp_train_and_eval(zoo, tmp_path):
    from typer.testing import CliRunner

    from trojanscope.cli.main import app

    out = tmp_path / "u.safetensors"
    res = CliRunner().invoke(app, ["ulp", "train", str(zoo.root), "--out", str(out),
                                   "--patterns", "2", "--steps", "20"])
    assert res.exit_code == 0, res.output
    assert load_ulp(out).n_patterns == 2 and "AUC" in res.output
    res = CliRunner().invoke(app, ["ulp", "eval", str(out), str(zoo.root), "--png",
                                   str(tmp_path / "roc.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "roc.png").stat().st_size > 1000
