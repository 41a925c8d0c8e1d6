"""L-RED pattern estimation (Xiang, Miller & Kesidis, Algorithm 1), vectorised over groups.

A *group* is one pattern-estimation problem: a putative target ``t`` and the clean images it is
estimated on, with weights over their classes. RED-A/RED-U have one group per class (all clean
images, eq. 3), RED-P one group per ordered pair (s, t) on ``D_s`` only (eq. 2). Every group's
pattern is a row of one ``[G, C, H, W]`` tensor; each iteration evaluates the model once on the
``[sum_g M_g]`` batch of (group, image) combinations and finished groups drop out.

The step rule is either the paper's fixed normalised-gradient step ``delta`` (eq. 5), or an
adaptive one: the step grows with the pattern (``rel_step * ||v||``, an Euler discretisation of
the same normalised-gradient path as the tiny fixed step), and when ``Q_t`` overshoots ``pi`` the
step is undone and halved (no new gradient needed) until it is below ``max(delta, tol*||v||)``,
so the pattern stops where the fine path would, with far fewer gradient evaluations. Until the
pattern moves a first image to its target (every ``q_st`` still at its value for ``v = 0``) the
misclassification fractions the weights are annealed on (eqs. 7-8) have not changed, so the
weights follow the same fixed-point iterations whatever the step, and the path is normalised
gradient ascent on ``J_t``: there the step grows faster (``free_step * ||v||``), since only the
discretisation of that ascent depends on it. Because
Algorithm 1 re-weights once per step of length delta, a coarse step of length ``h`` replays the
``h/delta`` re-weightings (eqs. 7-8) it stands for (:func:`anneal_repeat`); without that the
weights lag behind and the annealed norms come out 5-25% larger than the fine path's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._runtime import ProgressFn
from ...errors import InputError


@dataclass
class Groups:
    """The pattern-estimation problems solved together.

    Attributes:
        target: [G] putative target class of each group.
        index: [G, M] indices into the clean images (padded with 0 where ``valid`` is False).
        valid: [G, M] which entries of ``index`` are real.
        w0: [G, K] initial weights over source classes (rows sum to 1, zero on the target).
        anneal: update the weights with eqs. 7-8 (RED-A) or keep them fixed (RED-U, RED-P).
    """

    target: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    w0: torch.Tensor
    anneal: bool


def per_target_groups(y: torch.Tensor, num_classes: int, anneal: bool) -> Groups:
    """RED-A / RED-U: one group per class t on all clean images, uniform w over s != t."""
    k, n = num_classes, len(y)
    present = torch.bincount(y, minlength=k) > 0
    w0 = present[None].float().repeat(k, 1)
    w0.fill_diagonal_(0.0)
    if bool((w0.sum(1) == 0).any()):
        raise InputError("L-RED needs clean images of at least two classes")
    w0 = w0 / w0.sum(1, keepdim=True)
    index = torch.arange(n, device=y.device)[None].expand(k, n)
    return Groups(torch.arange(k, device=y.device), index, torch.ones(k, n, dtype=torch.bool,
                  device=y.device), w0.to(y.device), anneal)


def per_pair_groups(y: torch.Tensor, num_classes: int) -> tuple[Groups, torch.Tensor]:
    """RED-P: one group per ordered pair (s, t), s != t, on the images of class s only.

    Returns the groups and the [G, 2] (s, t) pairs. Classes without clean images are skipped.
    """
    k = num_classes
    counts = torch.bincount(y, minlength=k)
    present = [c for c in range(k) if counts[c] > 0]
    pairs = [(s, t) for s in present for t in range(k) if t != s]
    if not pairs:
        raise InputError("RED-P needs clean images of at least one class")
    m = int(counts.max())
    order = torch.argsort(y, stable=True)
    start = torch.cumsum(counts, 0) - counts
    index = torch.zeros(len(pairs), m, dtype=torch.long, device=y.device)
    valid = torch.zeros(len(pairs), m, dtype=torch.bool, device=y.device)
    w0 = torch.zeros(len(pairs), k, device=y.device)
    for g, (s, _) in enumerate(pairs):
        c = int(counts[s])
        index[g, :c] = order[int(start[s]) : int(start[s]) + c]
        valid[g, :c] = True
        w0[g, s] = 1.0
    pt = torch.tensor(pairs, dtype=torch.long, device=y.device)
    return Groups(pt[:, 1], index, valid, w0, anneal=False), pt


def anneal_weights(q: torch.Tensor, big_q: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """Eqs. 7-8: ``T = -log Q_t``, ``w_s = softmax_{s != t}(q_st / T)``; ``w0`` where Q_t = 0.

    Args:
        q: [G, K] group misclassification fractions q_st.
        big_q: [G] Q_t(v^(tau+1), w^(tau)).
        w0: [G, K] initial (uniform) weights; their zeros mark the excluded classes.
    """
    allowed = w0 > 0
    temp = -torch.log(big_q.clamp(1e-12, 1.0 - 1e-7))[:, None]
    logits = (q / temp).masked_fill(~allowed, float("-inf"))
    w = torch.softmax(logits, dim=1)
    return torch.where((big_q > 0)[:, None], w, w0)


def anneal_repeat(q: torch.Tensor, w: torch.Tensor, w0: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Apply eqs. 7-8 ``n[g]`` times to group g with q held fixed (``n = 0`` leaves w unchanged).

    Algorithm 1 re-weights once per step of length delta, so along ``n`` tiny steps over which q
    barely changes the weights run ``n`` iterations of ``w <- softmax(q / -log(w . q))`` towards its
    fixed point. The adaptive rule takes one step of length ``n * delta`` and replays those
    iterations here, so that its weights (and hence its path) follow the fine-step ones.

    Args:
        q: [G, K] q_st at the current pattern; w: [G, K] current weights; w0: [G, K] uniform ones.
        n: [G] iterations per group.
    """
    w = w.clone()
    left = n.clone()
    while bool((left > 0).any()):
        go = left > 0
        new = anneal_weights(q[go], (w[go] * q[go]).sum(1), w0[go])
        done = (new - w[go]).abs().amax(1) < 1e-7  # at the fixed point: further iterations are no-ops
        w[go] = new
        left[go] = torch.where(done, torch.zeros_like(left[go]), left[go] - 1)
    return w


def _chunks(sizes: list[int], budget: int) -> list[list[int]]:
    out: list[list[int]] = [[]]
    used = 0
    for i, s in enumerate(sizes):
        if out[-1] and used + s > budget:
            out.append([])
            used = 0
        out[-1].append(i)
        used += s
    return out


def estimate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, groups: Groups, *,
             pi: float, step: str, delta: float, rel_step: float, tol: float, tau_max: int,
             batch_size: int, free_step: float | None = None,
             progress: ProgressFn | None = None) -> dict[str, Any]:
    """Algorithm 1 for every group at once; returns the patterns and the search record.

    Args:
        model: returns logits; frozen by the caller (no parameter gradients).
        x: [N, C, H, W] clean images in [0, 1]; y: [N] their labels.
        groups: the problems to solve (see :class:`Groups`).
        pi: stop when the weighted misclassification fraction Q_t exceeds pi (eq. 3).
        step: "fixed" (``delta`` every step, as in the paper) or "adaptive".
        delta: the fixed step; for "adaptive", the finest step.
        rel_step: adaptive step as a fraction of the current ||v||.
        tol: adaptive: halve an overshooting step until it is <= max(delta, tol * ||v||).
        free_step: adaptive: the step as a fraction of ||v|| while no image of the group is
            misclassified to its target beyond those already at ``v = 0`` (None = ``rel_step``
            throughout).
        tau_max: most steps per group.
        batch_size: most images per forward pass (groups are chunked to fit).

    Returns:
        dict with ``v`` [G, C, H, W], ``w`` [G, K], ``q`` [G, K], ``big_q`` [G], ``steps`` [G],
        ``finished`` [G] (Q_t > pi reached), ``gradient_evaluations`` (per-group forward+backward
        passes over its images), ``forward_evaluations`` (per-group forward passes, including the
        step-halving retries of the adaptive rule), ``batched_passes`` and ``iterations``.
    """
    if step not in ("fixed", "adaptive"):
        raise InputError(f"unknown step rule {step!r}; use 'fixed' or 'adaptive'")
    dev = x.device
    g_n, k = groups.w0.shape
    valid = groups.valid
    yg = y[groups.index]  # [G, M]
    onehot = F.one_hot(yg, k).float() * valid[..., None]  # [G, M, K]
    counts = onehot.sum(1)  # [G, K] images of each class in each group
    inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    sizes = valid.sum(1).tolist()

    v_base = torch.zeros(g_n, *x.shape[1:], device=dev)
    d = torch.zeros_like(v_base)  # normalised ascent direction at v_base
    size = torch.zeros(g_n, device=dev)  # step to take from v_base along d
    cap = torch.full((g_n,), math.inf, device=dev)  # adaptive: largest step after an overshoot
    w = groups.w0.clone()
    q = torch.zeros(g_n, k, device=dev)
    q_start = torch.zeros(g_n, k, device=dev)  # q_st at v = 0 (images misclassified without a pattern)
    big_q = torch.zeros(g_n, device=dev)
    v_out = torch.zeros_like(v_base)
    steps = torch.zeros(g_n, dtype=torch.long, device=dev)
    active = torch.ones(g_n, dtype=torch.bool, device=dev)
    finished = torch.zeros(g_n, dtype=torch.bool, device=dev)
    n_grad = n_fwd = n_pass = it = 0

    while bool(active.any()):
        act = torch.nonzero(active).flatten()
        for chunk in _chunks([sizes[i] for i in act.tolist()], batch_size):
            gi = act[chunk]
            p = (v_base[gi] + size[gi].view(-1, 1, 1, 1) * d[gi]).detach().requires_grad_(True)
            xb = (x[groups.index[gi]] + p[:, None]).clamp(0.0, 1.0)  # eq. 1, [Gc, M, C, H, W]
            logp = torch.log_softmax(model(xb.flatten(0, 1)), dim=1).view(len(gi), -1, k)
            n_pass += 1
            n_fwd += len(gi)
            tgt = groups.target[gi]
            hit = (logp.detach().argmax(2) == tgt[:, None]).float()  # [Gc, M]
            q_c = torch.einsum("gm,gmk->gk", hit, onehot[gi]) * inv[gi]  # q_st, [Gc, K]
            w_c = w[gi]
            if groups.anneal:  # the re-weightings of the fine steps this step stands for, but one
                reps = (size[gi] / delta).round().long().clamp(1, 100_000) - 1
                w_c = anneal_repeat(q_c, w_c, groups.w0[gi], reps * (size[gi] > 0))
            bq = (w_c * q_c).sum(1)  # Q_t(v^(tau+1), w^(tau))
            q[gi], big_q[gi] = q_c, bq
            over = bq > pi
            if step == "adaptive":
                norm_base = v_base[gi].flatten(1).norm(dim=1)
                fine = size[gi] <= torch.clamp(tol * norm_base, min=delta) * (1 + 1e-6)
                retry = over & ~fine
                done = over & fine
            else:
                retry = torch.zeros_like(over)
                done = over
            # overshoot with a coarse step: undo it and try half of it (same gradient, same w)
            size[gi[retry]] = size[gi[retry]] / 2
            cap[gi[retry]] = size[gi[retry]]
            v_out[gi[done]] = p.detach()[done]
            finished[gi[done]] = True
            active[gi[done]] = False
            acc = ~over
            if not bool(acc.any()):
                continue
            ga = gi[acc]
            moved = size[ga] > 0  # False at the initial evaluation of v = 0
            q_start[ga[~moved]] = q_c[acc][~moved]
            v_base[ga] = p.detach()[acc]
            if groups.anneal:  # Algorithm 1 takes its first step with the uniform w^(0)
                upd = ga[moved]
                w[upd] = anneal_weights(q_c[acc][moved], bq[acc][moved], groups.w0[upd])
            # J_t (eq. 5 surrogate): sum_s w_s mean_{x in D_s} log p(t | [x + v]_c)
            coef = (w[gi][:, None, :] * inv[gi][:, None, :] * onehot[gi]).sum(2) * acc[:, None]
            lp_t = logp.gather(2, tgt.view(-1, 1, 1).expand(-1, logp.shape[1], 1)).squeeze(2)
            (grad,) = torch.autograd.grad((coef * lp_t).sum(), p)
            n_grad += len(gi)
            gn = grad[acc].flatten(1).norm(dim=1).clamp_min(1e-12)
            d[ga] = grad[acc] / gn.view(-1, 1, 1, 1)
            steps[ga] += moved.long()
            if step == "adaptive":
                nb = v_base[ga].flatten(1).norm(dim=1)
                rel = torch.full_like(nb, rel_step)
                if free_step is not None:  # no image moved to t yet: only the ascent's discretisation
                    rel = torch.where((q_c[acc] <= q_start[ga]).all(1), free_step, rel)
                size[ga] = torch.minimum(cap[ga], torch.clamp(rel * nb, min=delta))
            else:
                size[ga] = delta
            out = steps[ga] >= tau_max  # tau_max steps taken without reaching pi
            v_out[ga[out]] = v_base[ga[out]]
            active[ga[out]] = False
        it += 1
        if progress is not None and (it % 50 == 0 or not bool(active.any())):
            progress({"iteration": it, "active": int(active.sum()), "groups": g_n,
                      "gradient_evaluations": n_grad})

    return {"v": v_out, "w": w, "q": q, "big_q": big_q, "steps": steps + finished.long(),  # the crossing step counts
            "finished": finished, "gradient_evaluations": n_grad, "forward_evaluations": n_fwd,
            "batched_passes": n_pass, "iterations": it}
