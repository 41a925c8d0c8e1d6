"""Certified upper bound and candidate attack: Algorithm 1 of Steinhardt, Koh & Liang (2017).

For a convex loss, a defender who trains on ``(D_c ∪ D_p) ∩ F`` and an attacker adding
``eps n`` points, the worst training loss ``M = max_{D_p ⊆ F} min_theta (1/n) L(theta; D_c ∪ D_p)``
is at most ``U(theta) = (1/n) L(theta; D_c) + eps max_{(x, y) in F} l(theta; x, y)`` for every
``theta``. Algorithm 1 minimises ``U`` by online dual averaging against the worst feasible point
of each iterate; the points form the candidate attack ``D_p``, and Proposition 1 (eq. 6) sandwiches
``M`` between the loss of the model trained on ``D_c ∪ D_p`` and ``U*``:
``(1/n) L(theta~; D_c ∪ D_p) <= M <= U* <= (1/n) L(theta~; D_c ∪ D_p) + Regret(eps n) / (eps n)``.

Everything is batched over P binary problems sharing the feature matrix (one-vs-rest on
multi-class data): one tensor program per step, not a loop over classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .feasible import FeasibleSet
from .solver import worst_point
from .svm import margins

_LABELS = (-1.0, 1.0)  # row 0 of a stacked feasible set is y = -1, row 1 is y = +1


@dataclass
class StackedSets:
    """P binary feasible sets as tensors [P, 2, ...] (row 0: y = -1, row 1: y = +1)."""

    mu: torch.Tensor
    normal: torch.Tensor
    sphere: torch.Tensor | None
    slab: torch.Tensor | None
    lo: float | None
    hi: float | None

    @classmethod
    def of(cls, sets: list[FeasibleSet]) -> StackedSets:
        f0 = sets[0]
        return cls(
            mu=torch.stack([f.centroids for f in sets]),
            normal=torch.stack([f.normals for f in sets]),
            sphere=None if f0.sphere is None else torch.stack([f.sphere for f in sets]),
            slab=None if f0.slab is None else torch.stack([f.slab for f in sets]),
            lo=f0.lo,
            hi=f0.hi,
        )

    def worst(self, theta: torch.Tensor, mu: torch.Tensor | None = None, normal: torch.Tensor | None = None):
        """Worst feasible point of each problem: ``argmax_{(x, y) in F} hinge(theta; x, y)``.

        Returns x [P, D], y [P] (+-1), loss [P].
        """
        mu = self.mu if mu is None else mu
        normal = self.normal if normal is None else normal
        ys = torch.tensor(_LABELS, dtype=theta.dtype, device=theta.device)
        w, b = theta[:, :-1], theta[:, -1]
        c = ys[None, :, None] * w[:, None, :]  # minimise <y w, x> for each label
        x = worst_point(c, mu, radius=self.sphere, normal=normal, slab=self.slab, lo=self.lo, hi=self.hi)
        loss = (1 - ys[None] * ((x * w[:, None, :]).sum(-1) + b[:, None])).clamp(min=0)  # [P, 2]
        j = loss.argmax(1)
        ar = torch.arange(theta.shape[0], device=theta.device)
        return x[ar, j], ys[j], loss[ar, j]


@dataclass
class Alg1Run:
    """Trace of one run of Algorithm 1 (P problems, T steps).

    Attributes:
        clean_loss: ``(1/n) L(theta_{t-1}; D_c)``, [P, T].
        worst_loss: ``max_F l(theta_{t-1}; x, y)``, [P, T].
        x_p, y_p: the candidate attack, [P, T, D] and [P, T].
        upper: ``U*`` of this run, [P].
        regret_bound: the dual-averaging regret bound ``lambda_T rho^2 / 2 +
            sum_t ||g_t||^2 / (2 lambda_{t-1})``, [P].
        weight: attack points each candidate point stands for, ``eps n / T`` (1 when T = eps n).
        theta_avg: the average iterate ``(1/T) sum_t theta_{t-1}``, [P, D+1], a good start for
            (and competitor of) the trained model of Proposition 1.
    """

    clean_loss: torch.Tensor
    worst_loss: torch.Tensor
    x_p: torch.Tensor
    y_p: torch.Tensor
    upper: torch.Tensor
    regret_bound: torch.Tensor
    weight: float = 1.0
    theta_avg: torch.Tensor | None = None


def algorithm1(
    x: torch.Tensor,
    y: torch.Tensor,
    sets: StackedSets,
    *,
    steps: int,
    eps: float,
    rho: float,
    eta: float,
    data_dependent: bool = False,
) -> Alg1Run:
    """Algorithm 1 (Steinhardt et al. 2017), batched over P problems.

    ``z_t = z_{t-1} - g_t``, ``lambda_t = max(lambda_{t-1}, ||z_t|| / rho)``,
    ``theta_t = z_t / lambda_t`` with ``g_t = (1/n) grad L(theta_{t-1}; D_c) + eps grad l(theta_{t-1};
    x_t, y_t)``.

    With ``data_dependent`` the feasible set of step t is re-centred on ``D_c`` plus the points
    placed so far (the paper's modified algorithm for ``F(pi_p)``): a heuristic for the inner
    maximum, which is no longer a convex problem, so ``U*`` is then an estimate, not a bound.

    Args:
        x: clean features, [n, D] float64.
        y: labels in {-1, +1}, [P, n].
        sets: the P feasible sets.
        steps: T, normally ``eps n``.
        eps: poisoned fraction (``T / n`` for Proposition 1 to hold exactly).
        rho: radius of the parameter ball.
        eta: step size (``lambda_0 = 1 / eta``).
    """
    P, n = y.shape
    D = x.shape[1]
    dt, dev = x.dtype, x.device
    z = torch.zeros(P, D + 1, dtype=dt, device=dev)
    theta = torch.zeros_like(z)
    lam = torch.full((P,), 1.0 / eta, dtype=dt, device=dev)
    a_hist = torch.empty(P, steps, dtype=dt, device=dev)
    b_hist = torch.empty_like(a_hist)
    xs = torch.empty(P, steps, D, dtype=dt, device=dev)
    ys = torch.empty(P, steps, dtype=dt, device=dev)
    reg = torch.zeros(P, dtype=dt, device=dev)
    xa = torch.cat([x, torch.ones(n, 1, dtype=dt, device=dev)], dim=1)
    act_prev = None
    if data_dependent:
        member = torch.stack([(y < 0), (y > 0)], dim=1).to(dt)  # [P, 2, n]
        sums = member @ x  # [P, 2, D]
        counts = member.sum(-1)  # [P, 2]
    mu = normal = None
    ar = torch.arange(P, device=dev)
    theta_sum = torch.zeros_like(z)
    for t in range(steps):
        theta_sum += theta
        if data_dependent:
            mu = sums / counts[..., None]
            diff = mu - mu.flip(1)
            normal = diff / diff.norm(dim=-1, keepdim=True).clamp(min=1e-300)
        xt, yt, bt = sets.worst(theta, mu, normal)
        m = margins(theta, x, y)  # the one [n, D] product of the step
        at = (1 - m).clamp(min=0).mean(1)
        act = m < 1
        # clean gradient -(1/n) sum_{active} y_i (x_i, 1): consecutive iterates are close, so
        # only the few points whose hinge switched on/off are added or removed (full refresh
        # every 256 steps against round-off drift)
        if act_prev is None or t % 256 == 0:
            gsum = (act.to(dt) * y) @ xa
        else:
            cols = (act != act_prev).any(0).nonzero().flatten()
            if cols.numel():
                gsum = gsum + ((act[:, cols].to(dt) - act_prev[:, cols].to(dt)) * y[:, cols]) @ xa[cols]
        act_prev = act
        g = -gsum / n
        active = (bt > 0).to(dt)[:, None]
        g = g - eps * active * yt[:, None] * torch.cat([xt, torch.ones(P, 1, dtype=dt, device=dev)], dim=1)
        a_hist[:, t], b_hist[:, t], xs[:, t], ys[:, t] = at, bt, xt, yt
        reg += (g * g).sum(1) / (2 * lam)
        z = z - g
        lam = torch.maximum(lam, z.norm(dim=1) / rho)
        theta = z / lam[:, None]
        if data_dependent:
            j = (yt > 0).long()
            sums[ar, j] += xt
            counts[ar, j] += 1
    reg += lam * rho * rho / 2
    upper = (a_hist + eps * b_hist).min(1).values
    return Alg1Run(a_hist, b_hist, xs, ys, upper, reg, weight=eps * n / steps, theta_avg=theta_sum / steps)
