"""L-RED (Xiang, Miller & Kesidis): tiny models with an imperceptible additive backdoor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_snapshot
from torch import nn

import trojanscope as ts
from trojanscope.attacks import PoisoningAttack
from trojanscope.attacks.additive import AdditiveTrigger
from trojanscope.data import load_dataset
from trojanscope.detectors.model._lred_estimate import anneal_weights
from trojanscope.detectors.model.lred import LRED, gamma_order_pvalue
from trojanscope.metrics import attack_success_rate
from trojanscope.models import create_model
from trojanscope.train import train

SOURCES, TARGET = [1, 3, 7], 5
FAST = dict(n_per_class=8)


@pytest.fixture(scope="module")
def additive():
    """8x8 digits, small_cnn: a 3x3 local chessboard (+0.3) on sources {1,3,7} -> 5, and its twin."""
    tr = load_dataset("digits", "train")
    te = load_dataset("digits", "test")
    trig = AdditiveTrigger(pattern="local_chessboard", amplitude=0.3, patch_size=3,
                           location="bottom_right", quantize=False)
    poisoned, _ = PoisoningAttack(trigger=trig, target=TARGET, sources=SOURCES, count_per_source=60,
                                  seed=0).poison_data(tr)
    out = {"train": tr, "test": te, "trigger": trig, "clean_few": tr.clean_subset(20, seed=0)}
    for name, data in (("backdoored", poisoned), ("clean", tr)):
        torch.manual_seed(0)
        m = create_model("small_cnn", 10, tr.in_shape)
        train(m, data, epochs=15, lr=0.05, seed=0)
        out[name] = m
    return out


def test_attack_is_real(additive):
    asr = attack_success_rate(additive["backdoored"], additive["test"], additive["trigger"], TARGET,
                              sources=SOURCES)["asr"]
    assert asr > 0.9
    assert attack_success_rate(additive["clean"], additive["test"], additive["trigger"], TARGET)["asr"] < 0.1


def test_red_a_flags_backdoor_with_target_and_sources(additive):
    model = additive["backdoored"]
    snap = state_snapshot(model)
    r = LRED(**FAST).scan(model, additive["clean_few"])
    assert_unchanged(model, snap)
    assert r.backdoored and r.p_value < 0.05
    assert r.target == TARGET
    w = torch.tensor(r.per_class["weights"][TARGET])
    assert r.sources and set(r.sources) <= set(SOURCES)  # annealing found (some of) the sources
    assert float(w[SOURCES].sum()) > 0.6 and float(w[TARGET]) == 0.0
    norm = torch.tensor(r.per_class["norm"])
    true_norm = float(additive["trigger"].perturbation((1, 8, 8)).norm())
    assert int(norm.argmin()) == TARGET and float(norm[TARGET]) < 1.2 * true_norm
    assert r.trigger["pattern"].shape == (10, 1, 8, 8)
    assert r.extra["gradient_evaluations"] > 0 and r.extra["unfinished"] == 0
    assert r.per_class["finished"] == [True] * 10
    d = r.to_dict()
    assert d["method"] == "lred" and d["trigger"] == {"pattern": [10, 1, 8, 8]}


def test_red_a_does_not_flag_clean_twin(additive):
    r = LRED(**FAST).scan(additive["clean"], additive["clean_few"])
    assert not r.backdoored and r.p_value >= 0.05 and r.target is None and r.sources == []


def test_probability_output_model_gives_same_verdict(additive):
    probs = nn.Sequential(copy.deepcopy(additive["backdoored"]), nn.Softmax(dim=1))
    r = LRED(n_per_class=4, rel_step=0.15).scan(probs, additive["clean_few"])
    assert r.backdoored and r.target == TARGET


def test_red_p_and_red_u_run_vectorised(additive):
    rp = LRED(variant="P", n_per_class=2, rel_step=0.15).scan(additive["backdoored"], additive["clean_few"])
    # 90 pairs in one batched search: per-pair statistics, target = the t of the best pair
    r_pair = np.array(rp.per_class["r_pair"], dtype=float)
    assert r_pair.shape == (10, 10) and np.isnan(np.diag(r_pair)).all()
    assert rp.extra["pair"][1] == TARGET and rp.extra["pair"][0] in SOURCES
    ru = LRED(variant="U", n_per_class=4, rel_step=0.15).scan(additive["backdoored"], additive["clean_few"])
    assert ru.sources == [] and len(ru.per_class["r"]) == 10
    assert "weights" in ru.per_class
    assert np.allclose(np.array(ru.per_class["weights"])[TARGET][[0, 1, 2, 3, 4, 6, 7, 8, 9]], 1 / 9)


def test_adaptive_step_reaches_fixed_step_norm_with_fewer_gradients():
    """On a linear softmax model the fine fixed step (Algorithm 1) is cheap enough to run."""
    tr = load_dataset("digits", "train")
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    train(lin, tr, epochs=5, lr=0.05, seed=0)
    clean = tr.clean_subset(5, seed=1)
    fixed = LRED(step="fixed", delta=4e-3, n_per_class=5).scan(lin, clean)
    adapt = LRED(step="adaptive", delta=4e-3, n_per_class=5).scan(lin, clean)
    nf, na = np.array(fixed.per_class["norm"]), np.array(adapt.per_class["norm"])
    assert fixed.extra["unfinished"] == 0 and adapt.extra["unfinished"] == 0
    assert np.allclose(na, nf, rtol=0.05), (na, nf)
    assert adapt.extra["gradient_evaluations"] * 5 < fixed.extra["gradient_evaluations"]
    # the fixed rule takes ~||v||/delta steps per target (Algorithm 1, step 4)
    steps = np.array(fixed.per_class["steps"])
    assert np.allclose(steps * 4e-3, nf, rtol=0.2)
    # free growth while nothing is misclassified (weights cannot move there): the same norms,
    # far fewer gradients than the plain adaptive rule, which starts from delta at 10% a step
    free = LRED(step="adaptive", delta=4e-3, n_per_class=5, free_step=1.0).scan(lin, clean)
    slow = LRED(step="adaptive", delta=4e-3, n_per_class=5, free_step=None).scan(lin, clean)
    nfree = np.array(free.per_class["norm"])
    assert free.extra["unfinished"] == 0
    assert np.allclose(nfree, nf, rtol=0.05), (nfree, nf)
    assert free.extra["gradient_evaluations"] < 0.8 * slow.extra["gradient_evaluations"]
    # the work counter of every detector counts the same images as L-RED's own bookkeeping
    # (every group evaluates all of its images; retries run with autograd on too)
    n_img = len(clean)
    assert free.extra["work"]["images_with_gradient"] == n_img * free.extra["forward_evaluations"]


def test_perceptible_extension_flags_target_not_twin(additive):
    """Appendix A.3: annealed weights on mask+pattern estimation (registered "lred_perceptible")."""
    det = ts.create("model_detector", "lred_perceptible", n_per_class=4, steps=100)
    r = det.scan(additive["backdoored"], additive["clean_few"])
    assert r.backdoored and r.target == TARGET
    l1 = np.array(r.per_class["mask_l1"])
    assert int(l1.argmin()) == TARGET and l1[TARGET] < 0.5 * np.median(l1)
    assert r.trigger["mask"].shape == (10, 1, 8, 8) and r.trigger["pattern"].shape == (10, 1, 8, 8)
    assert not det.scan(additive["clean"], additive["clean_few"]).backdoored


def test_gamma_order_statistic_pvalue():
    rng = np.random.default_rng(0)
    null = rng.gamma(5.0, 0.1, size=9)
    out = gamma_order_pvalue(np.r_[null, 3.0])
    assert out["argmax"] == 9 and out["p_value"] < 1e-6
    from scipy import stats

    i = int(np.argmax(null))
    a, _, s = stats.gamma.fit(np.delete(null, i), floc=0)  # the null excludes the maximum
    expect = 1 - stats.gamma.cdf(null[i], a, scale=s) ** 9
    assert gamma_order_pvalue(null)["p_value"] == pytest.approx(expect, rel=1e-6, abs=1e-12)
    assert gamma_order_pvalue(np.r_[np.ones(5), np.inf])["p_value"] == 0.0
    # a p-value far below double precision's 1 - G resolution does not round to 0
    assert 0 < gamma_order_pvalue(np.r_[null, 50.0])["p_value"] < 1e-20


def test_anneal_weights_eqs_7_8():
    q = torch.tensor([[0.0, 0.9, 0.1, 0.0]])
    w0 = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]])
    big_q = torch.tensor([0.4])
    w = anneal_weights(q, big_q, w0)
    t = -np.log(0.4)
    e = np.exp(np.array([0.0, 0.9, 0.1]) / t)
    assert torch.allclose(w[0, :3], torch.tensor(e / e.sum(), dtype=torch.float32), atol=1e-6)
    assert float(w[0, 3]) == 0.0
    assert torch.equal(anneal_weights(q, torch.tensor([0.0]), w0), w0)  # Q_t = 0: uniform


def test_registry_and_bad_parameters(additive):
    assert "lred" in ts.available("model_detector")
    with pytest.raises(ts.InputError, match="variant"):
        LRED(variant="Z").scan(additive["clean"], additive["clean_few"])
    with pytest.raises(ts.InputError, match="pi"):
        LRED(pi=1.5).scan(additive["clean"], additive["clean_few"])
    with pytest.raises(ts.InputError, match="lred: step must be one of"):
        LRED(step="huge").scan(additive["clean"], additive["clean_few"])
