"""L-RED step rules compared: the paper's fixed step (delta = 1e-4) versus the adaptive one.

``lred_speed(model, clean, twin=...)`` runs RED-A on a model (and its twin) with both step rules
and returns, for each: seconds per scan, gradient evaluations (per-target forward+backward
passes over its clean images), forward evaluations, the final ||v_t|| per target, the verdicts,
and the largest relative difference of the final norms between the two rules. Imported by
``bench/lred_mnist.py`` and ``bench/scan_speed.py``.

The fixed step takes about ||v_t|| / delta steps per target (Algorithm 1, step 4), i.e. tens of
thousands on MNIST; ``fixed_targets`` restricts the fixed-step run (and the norm comparison) to a
few putative targets so that it fits a laptop budget, and ``fixed_delta`` can coarsen it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from trojanscope.data import ImageData
from trojanscope.detectors.model import frozen
from trojanscope.detectors.model._lred_estimate import Groups, estimate, per_target_groups
from trojanscope.detectors.model.lred import LRED, gamma_order_pvalue
from trojanscope.models._logits import ensure_logits


def _subset(groups: Groups, targets: list[int]) -> Groups:
    i = torch.as_tensor(targets)
    return Groups(groups.target[i], groups.index[i], groups.valid[i], groups.w0[i], groups.anneal)


def _run(model: torch.nn.Module, data: ImageData, det: LRED, targets: list[int] | None) -> dict[str, Any]:
    """Pattern estimation of RED-A for ``targets`` (all when None) with ``det``'s step rule."""
    groups = per_target_groups(data.y, data.num_classes, anneal=det.variant == "A")
    if targets is not None:
        groups = _subset(groups, targets)
    with frozen(model):
        net = ensure_logits(model, data.x)
        t0 = time.perf_counter()
        est = estimate(net, data.x, data.y, data.num_classes, groups, pi=det.pi, step=det.step,
                       delta=det.delta, rel_step=det.rel_step, tol=det.tol, tau_max=det.tau_max,
                       batch_size=det.batch_size)
        sec = time.perf_counter() - t0
    norms = est["v"].flatten(1).norm(dim=1).tolist()
    return {"seconds": sec, "gradient_evaluations": est["gradient_evaluations"],
            "forward_evaluations": est["forward_evaluations"], "iterations": est["iterations"],
            "targets": groups.target.tolist(), "norms": norms,
            "steps": est["steps"].tolist(), "unfinished": int((~est["finished"]).sum())}


def _compare(m: torch.nn.Module, data: ImageData, n_per_class: int, fixed_delta: float,
             fixed_targets: list[int] | None, tau_max: int, seed: int) -> dict[str, Any]:
    r = LRED(variant="A", n_per_class=n_per_class, step="adaptive", delta=fixed_delta, seed=seed).scan(m, data)
    ad = {"seconds": r.seconds, "gradient_evaluations": r.extra["gradient_evaluations"],
          "forward_evaluations": r.extra["forward_evaluations"], "iterations": r.extra["iterations"],
          "norms": r.per_class["norm"], "steps": r.per_class["steps"], "p_value": r.p_value,
          "backdoored": r.backdoored, "target": r.target, "sources": r.sources}
    fixed = LRED(variant="A", n_per_class=n_per_class, step="fixed", delta=fixed_delta, tau_max=tau_max,
                 seed=seed)
    fx = _run(m, data, fixed, fixed_targets)
    if fixed_targets is None:  # a full scan: the fixed rule's verdict too
        pv = gamma_order_pvalue(1.0 / torch.tensor(fx["norms"], dtype=torch.float64))
        fx.update(p_value=pv["p_value"], backdoored=pv["p_value"] < fixed.theta,
                  target=pv["argmax"] if pv["p_value"] < fixed.theta else None)
    ts_ = fx["targets"]
    rel = [abs(ad["norms"][t] - f) / f for t, f in zip(ts_, fx["norms"], strict=True) if f > 0]
    ad_grads = sum(ad["steps"][t] for t in ts_)  # one gradient per accepted step and target
    return {"adaptive": ad, "fixed": fx, "adaptive_norms_on_fixed_targets": [ad["norms"][t] for t in ts_],
            "max_relative_norm_difference": max(rel) if rel else None,
            "fixed_over_adaptive_gradients_on_fixed_targets": fx["gradient_evaluations"] / max(1, ad_grads)}


def lred_speed(model: torch.nn.Module, clean: ImageData, *, twin: torch.nn.Module | None = None,
               n_per_class: int = 8, fixed_delta: float = 1e-4, fixed_targets: list[int] | None = None,
               tau_max: int = 100_000, seed: int = 0) -> dict[str, Any]:
    """Fixed versus adaptive step of RED-A on ``model`` (and on its clean ``twin`` when given).

    Args:
        model: the model to scan (e.g. the backdoored one).
        clean: labelled clean images; ``n_per_class`` per class are drawn with ``seed``.
        twin: optional second model (e.g. the clean twin), reported under "twin".
        fixed_delta: the fixed step (the paper's 1e-4); the adaptive rule uses it as finest step.
        fixed_targets: putative targets run with the fixed step (None = all, with a verdict; the
            adaptive scan always covers every target and gives the scan's verdict).
        tau_max: most fixed steps per target.

    Returns:
        {"model": {...}, "twin": {...} (if given), settings}: per rule seconds, gradient and
        forward evaluations, final norms, steps, verdicts; the largest relative norm difference.
    """
    data = clean.clean_subset(n_per_class, seed=seed)
    out: dict[str, Any] = {"method": "lred RED-A", "n_per_class": n_per_class, "fixed_delta": fixed_delta,
                           "fixed_targets": fixed_targets, "tau_max": tau_max}
    for which, m in (("model", model), ("twin", twin)):
        if m is not None:
            out[which] = _compare(m, data, n_per_class, fixed_delta, fixed_targets, tau_max, seed)
    return out
