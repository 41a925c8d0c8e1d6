"""The defender's learner: a linear SVM (hinge loss) constrained to the L2 ball ``||theta|| <= rho``.

Steinhardt, Koh & Liang (2017) analyse ``Theta = {theta: ||theta||_2 <= rho}`` with the hinge
loss ``l(theta; x, y) = max(0, 1 - y (<w, x> + b))``, ``theta = (w, b)`` (the bias counts in the
norm, as in the authors' code). Everything is batched over P binary problems that share the
feature matrix (one-vs-rest): ``theta`` is [P, D + 1], labels are [P, N] in {-1, +1}.

Training (for the candidate attack's model ``theta~`` of Proposition 1 and the defender's
model on the sanitised data) minimises the exact constrained problem up to a small smoothing:
FISTA with adaptive restart (O'Donoghue & Candès 2015) on the quadratically smoothed hinge,
projected onto the ball; the reported losses are always the true hinge losses of the result,
so an imprecise optimum can only make the Proposition-1 lower bound larger, never smaller.
"""

from __future__ import annotations

import torch


def margins(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y (<w, x> + b)``, [P, N], for theta [P, D+1], x [N, D], y [P, N]."""
    return y * ((x @ theta[:, :-1].T).T + theta[:, -1:])  # x @ w.T: the contiguous layout


def hinge(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-point hinge losses, [P, N]."""
    return (1 - margins(theta, x, y)).clamp(min=0)


def hinge_grad(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Gradient of ``sum_i weights_pi * hinge_pi`` w.r.t. theta, [P, D+1] (a subgradient at kinks)."""
    active = (margins(theta, x, y) < 1).to(x.dtype) * weights * y  # [P, N]
    return -torch.cat([active @ x, active.sum(1, keepdim=True)], dim=1)


def project_ball(theta: torch.Tensor, rho: float) -> torch.Tensor:
    n = theta.norm(dim=1, keepdim=True)
    return theta * (rho / n.clamp(min=rho))


def _smoothed(theta, x, y, weights, mu):
    z = 1 - margins(theta, x, y)  # hinge argument
    val = torch.where(z >= mu, z - mu / 2, torch.where(z > 0, z * z / (2 * mu), torch.zeros_like(z)))
    dz = torch.where(z >= mu, torch.ones_like(z), (z / mu).clamp(min=0)) * weights * y
    grad = -torch.cat([dz @ x, dz.sum(1, keepdim=True)], dim=1)
    return (val * weights).sum(1), grad


def train_svm(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    rho: float,
    weights: torch.Tensor | None = None,
    smoothing: float = 1e-3,
    iters: int = 800,
    theta0: torch.Tensor | None = None,
) -> torch.Tensor:
    """``argmin_{||theta|| <= rho} sum_i weights_i hinge(theta; x_i, y_i)``, batched over P.

    Args:
        x: features, [N, D] float64.
        y: labels in {-1, +1}, [P, N].
        rho: radius of the parameter ball.
        weights: non-negative point weights, [P, N] (0 drops a point, counts repeat it).
        smoothing: width of the quadratic smoothing of the hinge kink (objective error <= it/2
            per unit weight).
        iters: FISTA iterations.
        theta0: warm start, [P, D+1].
    Returns:
        theta, [P, D+1].
    """
    P = y.shape[0]
    out_dtype = x.dtype
    # float32 iterations: twice as fast and ample for an optimiser whose result is only ever
    # scored by float64 losses
    x, y = x.float(), y.float()
    if weights is None:
        weights = torch.ones_like(y)
    norm = weights.float().sum(1, keepdim=True).clamp(min=1e-12)
    w = weights.float() / norm  # mean loss: the step size does not depend on N
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    # Lipschitz constant of the smoothed gradient: max_i w_i * ||X~||_op^2 / mu (power iteration)
    g = torch.Generator(device=x.device).manual_seed(0)
    v = torch.randn(xa.shape[1], dtype=x.dtype, device=x.device, generator=g)
    for _ in range(30):
        v = xa.T @ (xa @ v)
        v = v / v.norm()
    sig2 = float((xa @ v).norm() ** 2) * 1.05
    theta = torch.zeros(P, x.shape[1] + 1, dtype=x.dtype, device=x.device) if theta0 is None \
        else project_ball(theta0.float().clone(), rho)
    # continuation: a coarse smoothing first (large steps), then the target one
    stages = [m for m in (0.1, 0.01, 0.001) if m > smoothing] + [smoothing]
    per = [iters // (2 * len(stages))] * (len(stages) - 1)
    per.append(iters - sum(per))
    for mu, k in zip(stages, per, strict=True):
        step = (mu / (w.max(1).values * sig2))[:, None]
        z = theta.clone()
        t = torch.ones(P, 1, dtype=x.dtype, device=x.device)
        prev = torch.full((P,), float("inf"), dtype=x.dtype, device=x.device)
        for _ in range(k):
            val, grad = _smoothed(z, x, y, w, mu)
            new = project_ball(z - step * grad, rho)
            t_new = (1 + (1 + 4 * t * t).sqrt()) / 2
            z = new + ((t - 1) / t_new) * (new - theta)
            # adaptive restart (O'Donoghue & Candes): drop momentum where the objective went up
            restart = (val > prev)[:, None]
            z = torch.where(restart, new, z)
            t = torch.where(restart, torch.ones_like(t), t_new)
            prev = val
            theta = new
    return project_ball(theta.to(out_dtype), rho)
