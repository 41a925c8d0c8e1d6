"""The worst feasible point for a linear objective: ``argmin_x <c, x>`` over sphere ∩ slab ∩ box.

Algorithm 1 of Steinhardt, Koh & Liang (2017) needs ``argmax_{(x, y) in F} l(theta; x, y)`` at
every step. For the hinge loss ``l = max(0, 1 - y (<w, x> + b))`` and a fixed label ``y`` this is
``argmin_x <y w, x>`` over the class-``y`` feasible set, a convex problem, solved here exactly
and batched over any leading dimensions (labels, one-vs-rest problems):

* **sphere** ``||x - mu|| <= r``: ``x = mu - r c / ||c||``.
* **sphere ∩ slab** ``|<x - mu, v>| <= s`` (``v`` unit): the optimum lies in the 2-D subspace
  spanned by ``v`` and the part of ``c`` orthogonal to it. Either the sphere optimum already
  satisfies the slab, or the slab is active: ``<u, v> = -sign(<c, v>) s`` and the rest of the
  radius, ``sqrt(r^2 - s^2)``, goes against the orthogonal part of ``c`` (closed form).
* **box** ``lo <= x <= hi`` (pixel range), with the sphere and/or the slab: no closed form.
  For a fixed direction ``d`` the minimiser of ``<d, u>`` over box ∩ ball is
  ``u_i = clip(-d_i t, lo_i - mu_i, hi_i - mu_i)`` (KKT, ``t = 1 / multiplier``); the sphere
  constraint fixes ``t``, found exactly by sorting the breakpoints where coordinates saturate.
  An active slab adds a multiplier ``nu >= 0``: ``d = c + nu sign * v``, and ``<v, u(nu)>`` is
  monotone in ``nu`` (the derivative of the concave dual), so ``nu`` is bracketed by a batched
  grid refinement; the answer is the convex combination of the two bracket ends that lies
  exactly on the slab face, which is feasible (the set is convex) and, for the box ∩ slab
  linear program, exactly optimal.
* **slab alone** is unbounded along every direction orthogonal to ``v``: it needs the box (the
  paper's slab defence on pixels lives in the pixel range) or a sphere; :func:`worst_point`
  raises :class:`~trojanscope.errors.InputError` otherwise.
"""

from __future__ import annotations

import torch

from ..errors import InputError

_GRID = 16  # bracket points per refinement round of the slab multiplier
_ROUNDS = 9  # 16^9 ~ 7e10: the bracket is far below float64 noise of the objective


def _ball_box_min(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
    """``argmin_u <d, u>`` over ``a <= u <= b`` (``a <= 0 <= b``) ∩ ``||u|| <= r``.

    Args:
        d: directions, [..., D].
        a, b: box bounds relative to the centre, broadcastable to [..., D].
        r: radii, [...], or None for no sphere.
    Returns:
        u, [..., D].
    """
    a, b = torch.broadcast_tensors(a, b)
    a, b = a.expand_as(d), b.expand_as(d)
    m = torch.where(d > 0, -a, b)  # how far coordinate i can move before it saturates
    ad = d.abs()
    vertex = torch.where(d > 0, a, torch.where(d < 0, b, torch.zeros_like(d)))
    if r is None:
        return vertex
    safe = ad > 0
    tb = torch.where(safe, m / torch.where(safe, ad, torch.ones_like(ad)), torch.zeros_like(ad))
    tb_sorted, order = tb.sort(dim=-1)
    m2 = torch.where(safe, m * m, torch.zeros_like(m)).gather(-1, order)
    d2 = (ad * ad).gather(-1, order)
    sat = m2.cumsum(-1)  # squared length of the coordinates saturated by breakpoint k
    # sum of d_i^2 still moving freely after breakpoint k: an exclusive suffix sum, summed from
    # the end (total - prefix would cancel catastrophically when the first terms dominate)
    free = torch.cat([d2.flip(-1).cumsum(-1).flip(-1)[..., 1:], torch.zeros_like(d2[..., :1])], dim=-1)
    f = sat + free * tb_sorted**2  # ||u(t_k)||^2, non-decreasing in k
    r2 = (r * r).unsqueeze(-1)
    k = (f < r2).sum(-1, keepdim=True)  # breakpoints passed before the sphere binds
    D = d.shape[-1]
    kk = (k - 1).clamp(min=0)
    sat_k = torch.where(k > 0, sat.gather(-1, kk), torch.zeros_like(r2))
    free_k = torch.where(k > 0, free.gather(-1, kk), d2.sum(-1, keepdim=True))
    t = ((r2 - sat_k).clamp(min=0) / free_k.clamp(min=1e-300)).sqrt()
    u = torch.where(k >= D, vertex, torch.minimum(torch.maximum(-d * t, a), b))
    # round-off guard: shrinking towards the centre keeps the box (a <= 0 <= b) and the slab
    n = u.norm(dim=-1, keepdim=True)
    return u * (r.unsqueeze(-1) / n.clamp(min=1e-300)).clamp(max=1.0)


def _sphere_slab_closed_form(c: torch.Tensor, v: torch.Tensor, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``argmin_u <c, u>`` over ``||u|| <= r`` ∩ ``|<u, v>| <= s`` (``v`` unit), closed form."""
    alpha = (c * v).sum(-1, keepdim=True)
    perp = c - alpha * v
    beta = perp.norm(dim=-1, keepdim=True)
    cn = c.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    r, s = r.unsqueeze(-1), s.unsqueeze(-1)
    sphere = -r * c / cn
    a_face = -torch.sign(alpha) * torch.minimum(s, r)
    b_face = (r * r - a_face * a_face).clamp(min=0).sqrt()
    face = a_face * v - b_face * perp / beta.clamp(min=1e-300)
    use_sphere = (r * alpha.abs() / cn) <= s
    return torch.where(use_sphere, sphere, face)


def worst_point(
    c: torch.Tensor,
    mu: torch.Tensor,
    *,
    radius: torch.Tensor | None = None,
    normal: torch.Tensor | None = None,
    slab: torch.Tensor | None = None,
    lo: torch.Tensor | float | None = None,
    hi: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``argmin_x <c, x>`` over the feasible set of one class, batched over leading dims.

    Steinhardt et al. (2017), Algorithm 1, line "compute (x_t, y_t) = argmax_F l(theta; x, y)":
    for the hinge loss and label ``y``, call with ``c = y * w``.

    Args:
        c: objective directions, [..., D].
        mu: centres of the sphere and slab (the class centroid), [..., D].
        radius: sphere radii ``r_y``, [...], or None (no sphere).
        normal: unit slab normals ``(mu_y - mu_-y) / ||.||``, [..., D] (needed with ``slab``).
        slab: slab half-widths ``s_y`` along ``normal``, [...], or None (no slab).
        lo, hi: box bounds (scalar or [D] / [..., D]), or None (no box).
    Returns:
        the minimisers, [..., D], inside the feasible set.
    """
    has_box = lo is not None and hi is not None
    if radius is None and not has_box:
        raise InputError(
            "the slab alone is unbounded (the attacker could move any distance along the slab); "
            "combine it with the sphere or give a box (e.g. the pixel range 0..1)"
        )
    if slab is not None and normal is None:
        raise InputError("a slab needs its normal vector")
    if not has_box:
        if slab is None:
            cn = c.norm(dim=-1, keepdim=True).clamp(min=1e-300)
            return mu - radius.unsqueeze(-1) * c / cn
        return mu + _sphere_slab_closed_form(c, normal, radius, slab)
    lo_t = torch.as_tensor(lo, dtype=c.dtype, device=c.device)
    hi_t = torch.as_tensor(hi, dtype=c.dtype, device=c.device)
    a = (lo_t - mu).clamp(max=0)  # a centroid of data in the box lies in the box; guard rounding
    b = (hi_t - mu).clamp(min=0)
    u0 = _ball_box_min(c, a, b, radius)
    if slab is None:
        return torch.minimum(torch.maximum(mu + u0, lo_t), hi_t)  # mu + (hi - mu) may round past hi
    p0 = (u0 * normal).sum(-1)
    ok = p0.abs() <= slab
    if bool(ok.all()):
        return torch.minimum(torch.maximum(mu + u0, lo_t), hi_t)
    sign = torch.where(p0 >= 0, 1.0, -1.0).to(c.dtype)
    c_hat = c / c.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    sv = sign.unsqueeze(-1) * normal
    # d(w) = (1 - w) c_hat + w sign v covers nu = w / (1 - w) in [0, inf]; sign * <v, u(w)>
    # decreases in w and is <= 0 <= s at w = 1 (d = sign v), so [0, 1] brackets the multiplier.
    # The bracket ends keep the very points (and slab values) that were compared: the argmin
    # jumps where a coordinate of d changes sign while the box vertex is inside the ball, and
    # recomputing an end from its w could land on the other side of such a jump by round-off.
    w_lo, w_hi = torch.zeros_like(slab), torch.ones_like(slab)
    u_lo, u_hi = u0, _ball_box_min(sv, a, b, radius)
    p_lo, p_hi = sign * p0, (u_hi * sv).sum(-1)
    grid = torch.linspace(0, 1, _GRID + 1, dtype=c.dtype, device=c.device)[1:-1]
    G = grid.numel()
    for _ in range(_ROUNDS):
        w = w_lo.unsqueeze(-1) + (w_hi - w_lo).unsqueeze(-1) * grid  # [..., G]
        d = (1 - w).unsqueeze(-1) * c_hat.unsqueeze(-2) + w.unsqueeze(-1) * sv.unsqueeze(-2)
        r_g = None if radius is None else radius.unsqueeze(-1).expand_as(w)
        u = _ball_box_min(d, a.unsqueeze(-2), b.unsqueeze(-2), r_g)  # [..., G, D]
        p = (u * sv.unsqueeze(-2)).sum(-1)  # [..., G]
        above = p > slab.unsqueeze(-1)  # still violates: the multiplier is too small
        n_above = above.sum(-1)  # monotone in theory: the first n_above grid points violate
        i_lo = (n_above - 1).clamp(min=0)
        i_hi = n_above.clamp(max=G - 1)
        has_lo, has_hi = n_above > 0, n_above < G
        # a grid point is taken only if it really is on its side (guards non-monotone round-off)
        has_lo &= p.gather(-1, i_lo.unsqueeze(-1)).squeeze(-1) > slab
        has_hi &= p.gather(-1, i_hi.unsqueeze(-1)).squeeze(-1) <= slab

        def pick(idx, cond, old_w, old_u, old_p, w=w, u=u, p=p):
            gi = idx.unsqueeze(-1)
            nw = torch.where(cond, w.gather(-1, gi).squeeze(-1), old_w)
            nu = torch.where(cond.unsqueeze(-1),
                             u.gather(-2, gi.unsqueeze(-1).expand(*gi.shape[:-1], 1, u.shape[-1])).squeeze(-2),
                             old_u)
            np_ = torch.where(cond, p.gather(-1, gi).squeeze(-1), old_p)
            return nw, nu, np_

        w_lo, u_lo, p_lo = pick(i_lo, has_lo, w_lo, u_lo, p_lo)
        w_hi, u_hi, p_hi = pick(i_hi, has_hi, w_hi, u_hi, p_hi)

    # convex combination on the face sign * <v, u> = s (u_lo violates, u_hi satisfies)
    lam = ((slab - p_hi) / (p_lo - p_hi).clamp(min=1e-300)).clamp(0, 1)
    u_face = lam.unsqueeze(-1) * u_lo + (1 - lam).unsqueeze(-1) * u_hi
    return torch.minimum(torch.maximum(mu + torch.where(ok.unsqueeze(-1), u0, u_face), lo_t), hi_t)
