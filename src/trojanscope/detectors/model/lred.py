"""L-RED: Lagrange-based reverse-engineering defense against imperceptible backdoors.

Xiang, Miller & Kesidis, "L-RED: efficient post-training detection of imperceptible backdoor
attacks without access to the training set" (ICASSP 2021). For each putative target ``t`` a
small additive pattern ``v_t`` is grown (Algorithm 1) until the weighted group misclassification
fraction ``Q_t = sum_s w_s q_st`` exceeds ``pi`` (eq. 3), the source weights being annealed with
temperature ``T = -log Q_t`` (eqs. 6-8) so that they concentrate on the classes that are easiest to
move to ``t``: the backdoor's source classes when ``t`` is its target. Anomaly detection
(sec. 3.2): ``r_t = 1/||v_t||_2``; a Gamma null fitted to every ``r_t`` but the largest; the order
statistic p-value ``1 - G(r_max)^K``; an attack when it is below ``theta``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..._params import Constraint, Interval, Options
from ..._registry import register
from ...data import ImageData
from ...errors import InputError
from ...types import ScanResult
from ._base import ModelDetector, ProgressFn
from ._lred_estimate import estimate, per_pair_groups, per_target_groups

_VARIANTS = ("A", "U", "P")


def gamma_order_pvalue(r: np.ndarray | torch.Tensor, m: int | None = None) -> dict[str, float]:
    """Order-statistic p-value of the largest statistic under a Gamma null (L-RED sec. 3.2).

    The null ``G`` is a Gamma distribution with location 0 fitted by maximum likelihood
    (``scipy.stats.gamma.fit(rest, floc=0)``) to every value except the largest; the p-value of
    ``r_max`` as the maximum of ``m`` null draws is ``1 - G(r_max)^m``, computed as
    ``-expm1(m * log1p(-sf(r_max)))`` so that tiny p-values do not round to 0 (the paper's
    "underflow"). A method-of-moments fit is used when the MLE fails (e.g. identical values).

    Args:
        r: [M] non-negative statistics (inf allowed: a zero-norm pattern).
        m: number of draws in the order statistic (default: ``len(r)``).

    Returns:
        {"p_value", "r_max", "argmax", "shape", "scale"}.
    """
    from scipy import stats

    r = np.asarray(torch.as_tensor(r, dtype=torch.float64).cpu(), dtype=float)
    if r.ndim != 1 or len(r) < 3:
        raise InputError("the Gamma null needs at least 3 statistics (3 classes)")
    m = len(r) if m is None else int(m)
    i = int(np.argmax(r))
    r_max = float(r[i])
    rest = np.delete(r, i)
    out = {"r_max": r_max, "argmax": i, "shape": math.nan, "scale": math.nan}
    if not np.isfinite(rest).all():  # two or more zero-norm patterns: no null can be fitted
        return {**out, "p_value": 1.0}
    if math.isinf(r_max):
        return {**out, "p_value": 0.0}
    mean, var = float(rest.mean()), float(rest.var())
    try:
        shape, _, scale = stats.gamma.fit(rest, floc=0)
        if not (np.isfinite(shape) and np.isfinite(scale) and shape > 0 and scale > 0):
            raise ValueError
    except (ValueError, RuntimeError, FloatingPointError):
        if var <= 0 or mean <= 0:
            return {**out, "p_value": 0.0 if r_max > mean else 1.0}
        shape, scale = mean * mean / var, var / mean
    sf = float(stats.gamma.sf(r_max, shape, scale=scale))
    p = -math.expm1(m * math.log1p(-sf)) if sf < 1 else 1.0
    return {**out, "p_value": float(p), "shape": float(shape), "scale": float(scale)}


@register("model_detector", "lred")
class LRED(ModelDetector):
    """L-RED model scan (RED-A by default), vectorised over every putative target.

    Args:
        variant: "A" (annealed source weights, Algorithm 1), "U" (weights fixed uniform: the
            S* u t* = C assumption) or "P" (one pattern per class pair (s, t) on D_s, the ICASSP
            2020 method [16]; order statistic over the K(K-1) pairs).
        n_per_class: clean images used per class (8: RED-A; 2: RED-A'); None = all given.
        pi: target misclassification fraction (eq. 3; paper 0.9).
        theta: detection threshold on the p-value (paper 0.05).
        step: "adaptive" (default) or "fixed" (the paper's constant step ``delta``, slow).
            The adaptive defaults (``rel_step`` 0.2, ``tol`` 1e-2, ``free_step`` 1.0) do 1/4-1/3 of
            the work of trojanscope 0.1's (0.1, 1e-3, none); the p-values move (up to 10x on
            backdoored models) but not across ``theta`` and the target stays
            on the ``bench/scan_speed.py`` models (issue 16).
        delta: the fixed step size (paper 1e-4); for "adaptive", the finest step.
        rel_step: adaptive step as a fraction of ||v|| (smaller = closer to the fixed-step path).
        tol: adaptive: an overshooting step is halved until <= max(delta, tol * ||v||).
        free_step: adaptive: the step as a fraction of ||v|| while no clean image is yet
            misclassified to the putative target (the weights cannot move there, only the
            discretisation of the gradient ascent changes); None = ``rel_step`` throughout.
        tau_max: most steps per pattern (a pattern that does not reach pi keeps its last norm).
        batch_size: most images per forward pass.
        seed: which clean images are used when there are more than ``n_per_class``.
    """

    def __init__(self, *, variant: str = "A", n_per_class: int | None = 8, pi: float = 0.9,
                 theta: float = 0.05, step: str = "adaptive", delta: float = 1e-4,
                 rel_step: float = 0.2, tol: float = 1e-2, free_step: float | None = 1.0,
                 tau_max: int = 50_000, batch_size: int = 4096, seed: int = 0) -> None:
        self.variant = variant
        self.n_per_class = n_per_class
        self.pi = pi
        self.theta = theta
        self.step = step
        self.delta = delta
        self.rel_step = rel_step
        self.tol = tol
        self.free_step = free_step
        self.tau_max = tau_max
        self.batch_size = batch_size
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "variant": [Options(_VARIANTS)],
        "n_per_class": [Interval(int, 1, None), None],
        "pi": [Interval(float, 0, 1, closed="neither")],
        "theta": [Interval(float, 0, 1, closed="neither")],
        "step": [Options(("adaptive", "fixed"))],
        "delta": [Interval(float, 0, None, closed="neither")],
        "rel_step": [Interval(float, 0, None, closed="neither")],
        "tol": [Interval(float, 0, None, closed="neither")],
        "free_step": [Interval(float, 0, 10, closed="right"), None],
        "tau_max": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "seed": [Interval(int, 0, None)],
    }

    def _estimate(self, model: nn.Module, data: ImageData, groups: Any,
                  progress: ProgressFn | None) -> dict[str, Any]:
        return estimate(model, data.x, data.y, data.num_classes, groups, pi=self.pi, step=self.step,
                        delta=self.delta, rel_step=self.rel_step, tol=self.tol,
                        tau_max=self.tau_max, batch_size=self.batch_size, free_step=self.free_step,
                        progress=progress)

    def _scan(self, model: nn.Module, clean: ImageData, num_classes: int,
              progress: ProgressFn | None) -> ScanResult:
        if num_classes < 3:
            raise InputError("L-RED needs at least 3 classes (a null is fitted to K-1 statistics)")
        data = clean if self.n_per_class is None else clean.clean_subset(self.n_per_class, self.seed)
        if self.variant == "P":
            return self._scan_pairs(model, data, num_classes, progress)
        groups = per_target_groups(data.y, num_classes, anneal=self.variant == "A")
        est = self._estimate(model, data, groups, progress)
        norm = est["v"].flatten(1).norm(dim=1).double().cpu()
        r = torch.where(norm > 0, 1.0 / norm, torch.full_like(norm, math.inf))
        test = gamma_order_pvalue(r)
        p, t_hat = test["p_value"], test["argmax"]
        backdoored = p < self.theta
        w = est["w"].cpu()
        # sources: classes holding more than a uniform share of the target's final weight
        allowed = groups.w0[t_hat].cpu() > 0
        src = [int(s) for s in torch.nonzero(allowed & (w[t_hat] > 1.0 / allowed.sum())).flatten()]
        if self.variant == "U":
            src = []  # weights never move: the sources are not estimated
        return ScanResult(
            method="lred", backdoored=backdoored, target=t_hat if backdoored else None,
            sources=src if backdoored else [], statistic=float(r[t_hat]), p_value=p,
            threshold=self.theta, statistic_key="r", threshold_on="p_value",
            per_class={"r": r.tolist(), "norm": norm.tolist(), "weights": w.tolist(),
                       "q": est["q"].cpu().tolist(), "steps": est["steps"].cpu().tolist(),
                       "finished": est["finished"].cpu().tolist()},
            trigger={"pattern": est["v"].detach().cpu()},
            extra=self._extra(est, test, len(data), t_hat, src),
        )

    def _scan_pairs(self, model: nn.Module, data: ImageData, num_classes: int,
                    progress: ProgressFn | None) -> ScanResult:
        k = num_classes
        groups, pairs = per_pair_groups(data.y, k)
        est = self._estimate(model, data, groups, progress)
        norm_p = est["v"].flatten(1).norm(dim=1).double().cpu()
        r_p = torch.where(norm_p > 0, 1.0 / norm_p, torch.full_like(norm_p, math.inf))
        test = gamma_order_pvalue(r_p)
        p, best = test["p_value"], test["argmax"]
        s_hat, t_hat = (int(c) for c in pairs[best].tolist())
        backdoored = p < self.theta
        pr = pairs.cpu()
        r_pair = torch.full((k, k), math.nan, dtype=torch.float64)
        r_pair[pr[:, 0], pr[:, 1]] = r_p
        # per target: its most anomalous pair (index -1 where no pair leads into the target)
        pair_idx = torch.full((k, k), -1, dtype=torch.long)
        pair_idx[pr[:, 0], pr[:, 1]] = torch.arange(len(pr))
        r_t, best_src = torch.nan_to_num(r_pair, nan=-math.inf).max(0)
        best_of_t = pair_idx[best_src, torch.arange(k)]
        v = est["v"].detach().cpu()
        pattern = torch.stack([v[i] if i >= 0 else torch.zeros_like(v[0]) for i in best_of_t.tolist()])
        src = [s_hat]
        if backdoored and math.isfinite(test["shape"]):
            from scipy import stats

            # other pairs into t_hat that are individually anomalous at level theta
            g_cdf = stats.gamma.cdf(r_p.numpy(), test["shape"], scale=test["scale"])
            pv = 1.0 - np.power(g_cdf, len(r_p))
            into = (pr[:, 1] == t_hat) & torch.from_numpy(pv < self.theta)
            src = sorted({s_hat} | set(pr[into, 0].tolist()))
        norm_t = torch.where(r_t > 0, 1.0 / r_t, torch.full_like(r_t, math.inf))
        return ScanResult(
            method="lred", backdoored=backdoored, target=t_hat if backdoored else None,
            sources=src if backdoored else [], statistic=float(r_p[best]), p_value=p,
            threshold=self.theta, statistic_key="r", threshold_on="p_value",
            per_class={"r": r_t.tolist(), "norm": norm_t.tolist(), "r_pair": r_pair.tolist()},
            trigger={"pattern": pattern},
            extra=self._extra(est, test, len(data), t_hat, src, pair=[s_hat, t_hat]),
        )

    def _extra(self, est: dict[str, Any], test: dict[str, float], n_images: int, t_hat: int,
               src: list[int], **more: Any) -> dict[str, Any]:
        p = test["p_value"]
        return {
            "variant": self.variant, "statistic": "r_max = 1/min_t ||v_t||_2",
            "candidate_target": t_hat, "candidate_sources": src,
            "neg_log10_p": (-math.log10(p) if p > 0 else math.inf),
            "gamma_shape": test["shape"], "gamma_scale": test["scale"], "gamma_fit": "mle_floc0",
            "clean_images": n_images, "unfinished": int((~est["finished"]).sum()),
            "gradient_evaluations": est["gradient_evaluations"],
            "forward_evaluations": est["forward_evaluations"],
            "batched_passes": est["batched_passes"], "iterations": est["iterations"],
            **more,
        }


# The perceptible (mask+pattern) extension of appendix A.3 is its own method, in lred_perceptible.py.
__all__ = ["LRED", "gamma_order_pvalue"]
