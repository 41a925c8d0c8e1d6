"""L-RED for perceptible backdoors (appendix A.3): annealed source weights for mask+pattern.

Xiang, Miller & Kesidis, L-RED, appendix A.3 proposes carrying the annealing of Algorithm 1 over
to the perceptible embedding ``m_p(x; {u, m}) = x (1 - m) + u m`` (eq. 12), whose reverse
engineering minimises ``||m||_1`` subject to the misclassification constraint (eqs. 13-14). We
solve, for every putative target t at once, the weighted problem of eq. 3 with this embedding:

    minimise ||m_t||_1  subject to  Q_t = sum_s w_s q_st(u_t, m_t) >= pi,

by Adam on the Lagrangian ``-J_t + lambda_t ||m_t||_1`` (J_t the weighted mean log-posterior of
eq. 5), with ``m = sigmoid(a)``, ``u = sigmoid(b)``, the multiplier ``lambda_t`` raised when the
constraint holds and lowered when it does not (as Neural Cleanse does for eq. 13), and the
weights re-annealed after every step with eqs. 7-8. The statistic is ``r_t = 1/||m_t||_1`` of the
smallest mask that met the constraint, tested with the same Gamma order statistic (sec. 3.2).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..._params import Boolean, Constraint, Interval
from ..._registry import register
from ...data import ImageData
from ...errors import InputError
from ...types import ScanResult
from ._base import ModelDetector, ProgressFn
from ._lred_estimate import anneal_weights, per_target_groups
from .lred import gamma_order_pvalue


@register("model_detector", "lred_perceptible")
class LREDPerceptible(ModelDetector):
    """Annealed mask+pattern reverse engineering (L-RED appendix A.3), all targets batched.

    Args:
        n_per_class: clean images per class (None = all given).
        pi: target misclassification fraction.
        theta: p-value threshold of the order-statistic test.
        steps: Adam steps per target (all targets step together).
        lr: Adam learning rate on the mask/pattern logits.
        init_cost: initial multiplier lambda of ||m||_1.
        cost_multiplier: lambda is multiplied (constraint met) or divided (not met) by this
            every ``patience`` steps.
        patience: steps between multiplier updates.
        anneal: re-weight the source classes with eqs. 7-8 (False: uniform, Neural Cleanse's
            S* u t* = C assumption).
        seed: which clean images are used.
    """

    experimental = ("L-RED appendix A.3 proposes it without experiments; measured on MNIST it "
                    "rarely reaches significance on a BadNets patch, misses a single-source patch "
                    "and can flag a clean model whose classes are a few pixels apart (see "
                    "docs/methods/lred.md). For perceptible triggers prefer neural_cleanse, or "
                    "bias_maps with a clean reference for a one-source patch")

    def __init__(self, *, n_per_class: int | None = 8, pi: float = 0.9, theta: float = 0.05,
                 steps: int = 300, lr: float = 0.1, init_cost: float = 1e-3,
                 cost_multiplier: float = 1.5, patience: int = 5, anneal: bool = True,
                 seed: int = 0) -> None:
        self.n_per_class = n_per_class
        self.pi = pi
        self.theta = theta
        self.steps = steps
        self.lr = lr
        self.init_cost = init_cost
        self.cost_multiplier = cost_multiplier
        self.patience = patience
        self.anneal = anneal
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "n_per_class": [Interval(int, 1, None), None],
        "pi": [Interval(float, 0, 1, closed="neither")],
        "theta": [Interval(float, 0, 1, closed="neither")],
        "steps": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "init_cost": [Interval(float, 0, None, closed="neither")],
        "cost_multiplier": [Interval(float, 1, None, closed="neither")],
        "patience": [Interval(int, 1, None)],
        "anneal": [Boolean()],
        "seed": [Interval(int, 0, None)],
    }

    def _scan(self, model: nn.Module, clean: ImageData, num_classes: int,
              progress: ProgressFn | None) -> ScanResult:
        if num_classes < 3:
            raise InputError("L-RED needs at least 3 classes (a null is fitted to K-1 statistics)")
        data = clean if self.n_per_class is None else clean.clean_subset(self.n_per_class, self.seed)
        x, y, k = data.x, data.y, num_classes
        dev = x.device
        groups = per_target_groups(y, k, anneal=self.anneal)
        onehot = nn.functional.one_hot(y, k).float()  # [N, K]
        counts = onehot.sum(0)
        inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
        c, h, w_ = x.shape[1:]
        a = torch.full((k, 1, h, w_), -3.0, device=dev, requires_grad=True)  # mask logits
        b = torch.zeros(k, c, h, w_, device=dev, requires_grad=True)  # pattern logits
        opt = torch.optim.Adam([a, b], lr=self.lr, betas=(0.5, 0.9))
        lam = torch.full((k,), self.init_cost, device=dev)
        w = groups.w0.clone()
        best = torch.full((k,), math.inf, device=dev)
        best_mask = torch.zeros(k, 1, h, w_, device=dev)
        best_pattern = torch.zeros(k, c, h, w_, device=dev)
        best_w = w.clone()
        tgt = torch.arange(k, device=dev)
        for step in range(self.steps):
            m, u = torch.sigmoid(a), torch.sigmoid(b)
            xb = x[None] * (1 - m[:, None]) + (u * m)[:, None]  # eq. 12, [K, N, C, H, W]
            logp = torch.log_softmax(model(xb.flatten(0, 1)), dim=1).view(k, len(x), k)
            hit = (logp.detach().argmax(2) == tgt[:, None]).float()  # [K, N]
            q = hit @ onehot * inv  # q_st, [K, K]
            big_q = (w * q).sum(1)
            l1 = m.detach().flatten(1).sum(1)
            met = big_q > self.pi
            better = met & (l1 < best)
            best = torch.where(better, l1, best)
            best_mask[better], best_pattern[better] = m.detach()[better], u.detach()[better]
            best_w[better] = w[better]
            if self.anneal:  # eqs. 7-8 after every step
                w = anneal_weights(q, big_q, groups.w0)
            lp_t = logp[tgt, :, tgt]  # [K, N] log p(t | x) for each target's own batch
            coef = (w * inv)[:, y]  # [K, N]: w_{y_n} / |D_{y_n}|
            j = (coef * lp_t).sum(1)
            loss = (-j + lam * m.flatten(1).sum(1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % self.patience == 0:
                lam = torch.where(met, lam * self.cost_multiplier, lam / self.cost_multiplier)
                lam = lam.clamp(1e-6, 1e3)
            if progress is not None and (step + 1) % 50 == 0:
                progress({"step": step + 1, "steps": self.steps, "met": int(torch.isfinite(best).sum())})
        final_l1 = torch.sigmoid(a).detach().flatten(1).sum(1)
        reached = torch.isfinite(best)
        l1 = torch.where(reached, best, final_l1).double().cpu()
        r = torch.where(l1 > 0, 1.0 / l1, torch.full_like(l1, math.inf))
        test = gamma_order_pvalue(r)
        p, t_hat = test["p_value"], test["argmax"]
        backdoored = p < self.theta
        wt = best_w[t_hat].cpu() if bool(reached[t_hat]) else w[t_hat].cpu()
        allowed = groups.w0[t_hat].cpu() > 0
        src = [int(s) for s in torch.nonzero(allowed & (wt > 1.0 / allowed.sum())).flatten()]
        if not self.anneal:
            src = []
        return ScanResult(
            method="lred_perceptible", backdoored=backdoored, target=t_hat if backdoored else None,
            sources=src if backdoored else [], statistic=float(r[t_hat]), p_value=p,
            threshold=self.theta, statistic_key="r", threshold_on="p_value",
            per_class={"r": r.tolist(), "mask_l1": l1.tolist(), "weights": best_w.cpu().tolist(),
                       "reached": reached.cpu().tolist()},
            trigger={"mask": best_mask.cpu(), "pattern": best_pattern.cpu()},
            extra={"statistic": "r_max = 1/min_t ||m_t||_1", "candidate_target": t_hat,
                   "candidate_sources": src, "gamma_shape": test["shape"], "gamma_scale": test["scale"],
                   "gamma_fit": "mle_floc0", "clean_images": len(x),
                   "gradient_evaluations": self.steps * k, "unfinished": int((~reached).sum())},
        )
