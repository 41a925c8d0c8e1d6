"""Input detectors (Jin et al. and STRIP) on the tiny backdoored digits CNN of conftest.

Every detector is fitted on clean *test-split* images the model never saw (half of them; the base
class holds out 30% of those for the threshold) and evaluated on the other half and on triggered
copies of non-target images.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import assert_unchanged, state_snapshot

import trojanscope as ts
from trojanscope.demo import demo_instance
from trojanscope.detectors.input import create_input_detector, input_detectors
from trojanscope.detectors.input.mutation import gaussian_fuzz, mutant_predictions
from trojanscope.metrics import roc_auc
from trojanscope.utils import generator

# small settings so that the whole file stays well under a minute on one core
FAST = {
    "mutation": {"n_mutants": 40},
    "uncertainty": {"n_samples": 40},
    "strip": {"n_blend": 16},
    "activation_space": {"n_components": 30},
    "lid": {"k": 10},
}
# feature squeezing is expected to fail on triggered inputs (Jin et al. sec. 6, Remark 7)
# minimal AUC on the tiny 16x16 model fitted on ~180 clean images
MIN_AUC = {"mutation": 0.9, "activation_space": 0.85, "kde": 0.9, "lid": 0.9, "uncertainty": 0.8,
           "strip": 0.9}
DETECTS_TRIGGERS = list(MIN_AUC)
TARGET_FPR = 0.1


@pytest.fixture(scope="module")
def split(backdoor):
    test = backdoor["test"]
    fit, held = test.split(0.5, seed=1)
    x_clean = held.of_classes([backdoor["target"]], exclude=True).x
    return {"fit": fit, "clean": held.x, "clean_nt": x_clean,
            "trig": backdoor["trigger"].apply(x_clean)}


def boundary_ae(model, x, step=0.01, max_steps=60):
    """Iterative sign-gradient steps, each image stopped as soon as its label flips: adversarial
    examples just past the decision boundary, like C&W's minimal ones. Returns (x_adv, flipped)."""
    model = copy.deepcopy(model).eval()
    y = model(x).argmax(1)
    xa, active = x.clone(), torch.ones(len(x), dtype=torch.bool)
    for _ in range(max_steps):
        xr = xa.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xr), y, reduction="sum").backward()
        xa = torch.where(active[:, None, None, None], (xa + step * xr.grad.sign()).clamp(0, 1), xa)
        with torch.no_grad():
            active &= model(xa).argmax(1) == y
        if not active.any():
            break
    return xa.detach(), ~active


def fpr_tolerance(target: float, n_cal: int, n_eval: int) -> float:
    """Three standard deviations of the clean FPR: calibration on n_cal, evaluation on n_eval."""
    return 3 * math.sqrt(target * (1 - target) * (1 / n_cal + 1 / n_eval))


def test_registry_has_every_method():
    assert set(input_detectors()) >= {"mutation", "activation_space", "kde", "lid", "uncertainty",
                                      "squeeze", "strip"}


@pytest.mark.parametrize("name", DETECTS_TRIGGERS)
def test_detector_flags_triggers_at_target_fpr(name, backdoor, split):
    model = backdoor["backdoored"]
    snap = state_snapshot(model)
    det = create_input_detector(name, fpr=TARGET_FPR, **FAST.get(name, {})).fit(model, split["fit"])
    s_clean, s_trig = det.score(split["clean"]), det.score(split["trig"])
    assert s_clean.shape == (len(split["clean"]),) and torch.isfinite(s_clean).all()
    auc = roc_auc(det.score(split["clean_nt"]), s_trig)
    assert auc > MIN_AUC[name], f"{name}: AUC {auc:.3f}"
    fpr = float(det.predict(split["clean"]).float().mean())
    n_cal = len(det.calibration_scores_)
    assert fpr <= TARGET_FPR + fpr_tolerance(TARGET_FPR, n_cal, len(split["clean"])), f"{name}: FPR {fpr:.3f}"
    assert float(det.predict(split["trig"]).float().mean()) > 2 * TARGET_FPR
    assert_unchanged(model, snap)  # a guard never modifies the model it guards
    # the same seed gives the same scores
    again = create_input_detector(name, fpr=TARGET_FPR, **FAST.get(name, {})).fit(model, split["fit"])
    assert torch.allclose(again.score(split["trig"][:20]), s_trig[:20])


def test_feature_squeezing_catches_aes_but_not_triggers(backdoor, split):
    """Jin et al. sec. 6: squeezing removes adversarial noise but not a backdoor trigger.

    The adversarial examples are minimal ones (just past the boundary, as C&W's in Xu et al.
    sec. 5): AUC 0.95-0.97 on every kernel setting and fixture seed tried. One-step FGSM at
    eps 0.15 gave 0.75-0.83 (a larger step moves an image deeper into the wrong class, where a
    squeezer no longer brings it back), too close to any threshold to assert on."""
    model = backdoor["backdoored"]
    det = create_input_detector("squeeze").fit(model, split["fit"])
    x = split["clean_nt"]
    xa, ok = boundary_ae(model, x)
    assert ok.float().mean() > 0.9
    auc_be = roc_auc(det.score(x), det.score(split["trig"]))
    auc_ae = roc_auc(det.score(x), det.score(xa[ok]))
    assert auc_ae > 0.85 and auc_be < 0.7 and auc_ae > auc_be + 0.3, (auc_ae, auc_be)


def test_mutation_adversarial_stage_flags_aes(backdoor, split):
    """Mutation I: adversarial examples change label under a small mutation (Jin et al. Fig. 8)."""
    model = backdoor["clean"]
    det = create_input_detector("mutation", stage="adversarial", n_mutants=40).fit(model, split["fit"])
    x = split["clean_nt"]
    xa, ok = boundary_ae(model, x)
    assert ok.float().mean() > 0.9
    assert roc_auc(det.score(x), det.score(xa[ok])) > 0.9


def test_mutants_are_batched_copies_of_the_model(backdoor, split):
    """The vmapped evaluation equals running each mutated head separately."""
    model = copy.deepcopy(backdoor["backdoored"]).eval()
    head = model.classifier
    params = gaussian_fuzz(head, 5, 1.0, 0.65, generator(3))
    with torch.no_grad():
        h = torch.flatten(model.features(split["clean"][:30]), 1)
        batched = mutant_predictions(head, params, h, batch_size=7)
        for i in range(5):
            m = copy.deepcopy(head)
            m.load_state_dict({k: v[i] for k, v in params.items()})
            assert torch.equal(m(h).argmax(1), batched[i])
    w = head[0].weight
    noise = params["0.weight"] - w
    assert noise.std().item() == pytest.approx(0.65 * w.max().item(), rel=0.05)


def test_both_stages_is_the_max_of_the_stages(backdoor, split):
    model = backdoor["backdoored"]
    kw = {"n_mutants": 30, "seed": 2}
    both = create_input_detector("mutation", stage="both", **kw).fit(model, split["fit"])
    x = split["trig"][:40]
    z = both.change_counts(both.model_, x)
    assert set(z) == {"adversarial", "backdoor"}
    s = both.score(x)
    assert s.shape == (40,) and torch.isfinite(s).all()


def test_activation_space_switching_probabilities(backdoor, split):
    det = create_input_detector("activation_space", n_components=20, layers=3).fit(
        backdoor["backdoored"], split["fit"])
    assert det.p_switch_.shape == (2,) and ((det.p_switch_ > 0) & (det.p_switch_ < 1)).all()
    ll = det.log_likelihood(det.model_, split["clean"])
    assert (ll <= 0).all()


def test_lid_logistic_variant(backdoor, split):
    det = create_input_detector("lid", k=10, combine="logistic").fit(backdoor["backdoored"], split["fit"])
    auc = roc_auc(det.score(split["clean_nt"]), det.score(split["trig"]))
    assert auc > 0.8


@pytest.mark.parametrize("name", ["mutation", "kde", "strip"])
def test_score_before_fit_and_bad_inputs(name, backdoor, split):
    det = create_input_detector(name, **FAST.get(name, {}))
    with pytest.raises(ts.InputError, match="fit"):
        det.score(split["clean"])
    det.fit(backdoor["backdoored"], split["fit"])
    with pytest.raises(ts.InputError, match="shape"):
        det.score(torch.rand(2, 1, 8, 8))
    with pytest.raises(ts.InputError, match=r"\[0, 1\]"):
        det.score(split["clean"][:2] * 300)


@pytest.mark.parametrize("name, params, msg", [
    ("mutation", {"stage": "sideways"}, "stage"),
    ("mutation", {"n_mutants": 0}, "n_mutants"),
    ("uncertainty", {"rate": 1.5}, "rate"),
    ("kde", {"sigma": 0}, "sigma"),
    ("lid", {"combine": "vote"}, "combine"),
    ("squeeze", {"bit_depth": None, "median_size": None}, "squeezer"),
    ("strip", {"n_blend": 0}, "n_blend"),
    ("activation_space", {"layers": 0}, "layers"),
])
def test_bad_parameters_are_input_errors(name, params, msg, backdoor, split):
    with pytest.raises(ts.InputError, match=msg):
        create_input_detector(name, **params).fit(backdoor["backdoored"], split["fit"])


def test_demo_settings_are_fast(backdoor, clean_few):
    import time

    for name in input_detectors():
        det = demo_instance("input_detector", name)
        t0 = time.perf_counter()
        det.fit(backdoor["backdoored"], clean_few)
        det.score(backdoor["test"].x[:100])
        assert time.perf_counter() - t0 < 5, name


def test_sprt_score_is_walds_verdict():
    """Jin et al. eq. 3: score >= 0 exactly when the SPRT accepts "malicious" for the stage."""
    from trojanscope.detectors.input._features import label_change_score, sprt_log_ratio

    z = torch.arange(0, 101)
    s_be = label_change_score(z, 100, "backdoor", 0.3, 0.05, 0.05, 0.05)
    s_ae = label_change_score(z, 100, "adversarial", 0.3, 0.05, 0.05, 0.05)
    assert (s_be.diff() < 0).all() and (s_ae.diff() > 0).all()  # fewer changes = more BE-like
    llr = sprt_log_ratio(z, 100, 0.25, 0.35)
    assert torch.equal(s_be >= 0, llr >= math.log(0.95 / 0.05))
    assert torch.equal(s_ae >= 0, llr <= math.log(0.05 / 0.95))
    assert bool(s_be[0] > 0) and bool(s_ae[100] > 0)


def test_median_filter_matches_scipy():
    import numpy as np
    import scipy.ndimage as nd

    from trojanscope.detectors.input.squeeze import median_filter

    x = torch.rand(2, 3, 9, 7, generator=generator(0))
    for size in (2, 3):
        ref = nd.median_filter(x.numpy(), size=(1, 1, size, size))
        assert np.abs(median_filter(x, size).numpy() - ref).max() < 1e-6
