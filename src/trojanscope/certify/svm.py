"""The defender's learner: a linear SVM (hinge loss) constrained to the L2 ball ``||theta|| <= rho``.

Steinhardt, Koh & Liang (2017) analyse ``Theta = {theta: ||theta||_2 <= rho}`` with the hinge
loss ``l(theta; x, y) = max(0, 1 - y (<w, x> + b))``, ``theta = (w, b)`` (the bias counts in the
norm, as in the authors' code). Everything is batched over P binary problems that share the
feature matrix (one-vs-rest): ``theta`` is [P, D + 1], labels are [P, N] in {-1, +1}.

Training (for the candidate attack's model ``theta~`` of Proposition 1 and the defender's
model on the sanitised data): :func:`train_svm_liblinear` solves the penalised form with
liblinear and bisects C to the ball's radius (accurate, the default); :func:`train_svm` is
FISTA with adaptive restart (O'Donoghue & Candès 2015) on the quadratically smoothed hinge,
projected onto the ball (pure torch, batched, but slow to converge on ill-conditioned pixels).
The reported losses are always the true hinge losses of the result, so an imprecise optimum
can only make the Proposition-1 lower bound larger, never smaller.
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


def train_svm_liblinear(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    rho: float,
    weights: torch.Tensor | None = None,
    bisection: int = 16,
    tol: float = 1e-5,
) -> torch.Tensor:
    """The same constrained SVM through its penalised form, solved by liblinear's dual CD.

    ``min_{||theta|| <= rho} sum_i w_i hinge_i`` equals ``min 0.5 ||theta||^2 + C sum_i w_i hinge_i``
    for the C at which the solution's norm is ``rho`` (Lagrange duality; the constraint binds
    unless the unconstrained optimum is inside the ball). C is found by bisection on log10 C;
    liblinear (scikit-learn ``LinearSVC``, ``intercept_scaling=1``) regularises the bias like
    a weight, which is the ball over ``(w, b)`` of this module. Far more accurate than FISTA on
    ill-conditioned pixel data for the same time, so it is the default of :class:`Certifier`.

    Args:
        x: features, [N, D].
        y: labels in {-1, +1}, [P, N].
        rho: radius of the parameter ball.
        weights: non-negative point weights, [P, N] (0 drops a point).
        bisection: bisection steps on log10 C within the decade where the norm crosses rho.
        tol: liblinear's stopping tolerance.
    Returns:
        theta, [P, D+1] float64 on x's device, inside the ball.
    """
    import numpy as np

    xn = x.detach().cpu().double().numpy()
    yn = y.detach().cpu().double().numpy()
    wn = None if weights is None else weights.detach().cpu().double().numpy()
    out = []
    for p in range(yn.shape[0]):  # liblinear fits one problem at a time
        rows = np.ones(len(xn), bool) if wn is None else wn[p] > 0
        xp, yp = xn[rows], yn[p, rows]
        sw = None if wn is None else wn[p, rows]

        def fit(log_c: float, xp=xp, yp=yp, sw=sw) -> np.ndarray:
            return _liblinear_fit(xp, yp, sw, log_c, rho, tol)

        # decades upward first (liblinear is slow at large C on non-separable, poisoned data,
        # so never fit far beyond the C that reaches the radius), then bisection in the decade
        lo, hi, best = -5.0, None, None
        for e in range(-5, 4):
            th = fit(float(e))
            if np.linalg.norm(th) > rho:
                hi = float(e)
                break
            lo, best = float(e), th
        if hi is not None:
            if best is None:  # already outside the ball at C = 1e-5: shrink onto it
                best = th
            else:
                for _ in range(bisection):
                    mid = (lo + hi) / 2
                    th = fit(mid)
                    if np.linalg.norm(th) > rho:
                        hi = mid
                    else:
                        lo, best = mid, th
        th = torch.from_numpy(best)[None]
        out.append(project_ball(th, rho))
    return torch.cat(out).to(x.device)


def _liblinear_fit(xp, yp, sw, log_c: float, rho: float, tol: float):
    """theta = (w, b) of ``0.5 ||theta||^2 + C sum_i sw_i hinge_i`` (numpy in, numpy out)."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    if len(np.unique(yp)) < 2:  # one class only: the best constant predictor in the ball
        return np.concatenate([np.zeros(xp.shape[1]), [rho * float(yp[0])]])
    m = LinearSVC(C=10.0**log_c, loss="hinge", dual=True, intercept_scaling=1.0, tol=tol, max_iter=20000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m.fit(xp, yp, sample_weight=sw)
    sign = 1.0 if m.classes_[1] > 0 else -1.0
    return sign * np.concatenate([m.coef_[0], m.intercept_])
