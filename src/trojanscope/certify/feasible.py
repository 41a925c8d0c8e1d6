"""Feasible sets of the sanitisation defences of Steinhardt, Koh & Liang (2017), Section 3.

``F_sphere = {(x, y): ||x - mu_y||_2 <= r_y}`` and
``F_slab = {(x, y): |<x - mu_y, mu_y - mu_-y>| <= s_y}``, their intersection, and an optional
box (the pixel range). The radii are the ``percentile``-th percentile of the clean data's
distances in each class (the authors' released code uses 70). The slab normal is stored as a
unit vector (its scale only rescales ``s_y``, which is calibrated on the data, so the set is the
same). With more than two classes ``mu_-y`` is the mean of every point not of class ``y``.

*Oracle* defences take the centroids from clean data; *data-dependent* ones
(:meth:`FeasibleSet.recentered`) re-estimate them from the data they are given, clean and
poisoned alike, keeping the radii (paper, "data-dependent defenses").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import InputError

DEFENSES = ("sphere", "slab", "sphere+slab")
_ALIASES = {"both": "sphere+slab", "slab+sphere": "sphere+slab", "sphere_slab": "sphere+slab"}


def canonical_defense(name: str) -> str:
    """``sphere``, ``slab`` or ``sphere+slab`` (``both`` is an alias)."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DEFENSES:
        raise InputError(f"unknown defense {name!r}; use one of {', '.join(DEFENSES)} (or both)")
    return key


def as_features(x: object, name: str = "features") -> torch.Tensor:
    """[N, ...] tensor -> float64 [N, D] (images are flattened)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"{name} must have shape [N, D] (or [N, C, H, W]) with N > 0, got {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: the points contain NaN or infinite values")
    return x


def _group_stats(x: torch.Tensor, member: torch.Tensor, percentile: float):
    """Centroids, unit slab normals and percentile radii of G groups of rows of ``x`` at once.

    Args:
        x: [N, D] float64.
        member: [G, N] bool, row g marks the points of group g (each group non-empty, not all).
    Returns:
        mu [G, D], normal [G, D], sphere [G], slab [G].
    """
    m = member.to(x.dtype)
    cnt = m.sum(1, keepdim=True)
    total = x.sum(0, keepdim=True)
    mu = m @ x / cnt
    rest = (total - m @ x) / (x.shape[0] - cnt).clamp(min=1)
    normal = mu - rest
    normal = normal / normal.norm(dim=1, keepdim=True).clamp(min=1e-300)
    # ||x_i - mu_g||^2 for every pair, one matrix product instead of a loop over groups
    d2 = (x * x).sum(1)[None] - 2 * mu @ x.T + (mu * mu).sum(1, keepdim=True)
    dist = d2.clamp(min=0).sqrt()
    proj = (x @ normal.T).T - (mu * normal).sum(1, keepdim=True)
    nan = torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
    q = percentile / 100.0
    sphere = torch.nanquantile(torch.where(member, dist, nan), q, dim=1)
    slab = torch.nanquantile(torch.where(member, proj.abs(), nan), q, dim=1)
    return mu, normal, sphere, slab


@dataclass
class FeasibleSet:
    """A sanitiser's feasible set, one sphere / slab per class.

    Attributes:
        defense: ``sphere``, ``slab`` or ``sphere+slab``.
        classes: the class labels, [K] int64; row k of the tensors below belongs to classes[k].
        centroids: ``mu_y``, [K, D] float64.
        normals: unit ``(mu_y - mu_-y) / ||mu_y - mu_-y||``, [K, D].
        sphere: radii ``r_y``, [K], or None when the defence has no sphere.
        slab: half-widths ``s_y`` along the unit normal, [K], or None.
        lo, hi: box bounds (floats), or None for no box.
        percentile: the percentile the radii were taken at.
    """

    defense: str
    classes: torch.Tensor
    centroids: torch.Tensor
    normals: torch.Tensor
    sphere: torch.Tensor | None
    slab: torch.Tensor | None
    lo: float | None = None
    hi: float | None = None
    percentile: float = 70.0

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def class_index(self, y: torch.Tensor) -> torch.Tensor:
        """Row of each label in ``classes`` (-1 for labels the set does not know)."""
        y = torch.as_tensor(y).long().reshape(-1).to(self.classes.device)
        hit = y[:, None] == self.classes[None, :]
        return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(y, -1))

    def contains(self, x: torch.Tensor, y: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
        """BoolTensor [N]: which (x_i, y_i) lie in F (unknown labels never do).

        ``tol`` is a relative slack for points placed exactly on the boundary by the solver.
        """
        x = as_features(x)
        if x.shape[1] != self.dim:
            raise InputError(f"features have {x.shape[1]} dimensions, the feasible set {self.dim}")
        k = self.class_index(y)
        if k.numel() != x.shape[0]:
            raise InputError(f"got {x.shape[0]} points but {k.numel()} labels")
        known = k >= 0
        kk = k.clamp(min=0)
        u = x - self.centroids[kk]
        ok = known.clone()
        if self.sphere is not None:
            r = self.sphere[kk]
            ok &= u.norm(dim=1) <= r * (1 + tol) + tol
        if self.slab is not None:
            s = self.slab[kk]
            ok &= (u * self.normals[kk]).sum(1).abs() <= s * (1 + tol) + tol
        if self.lo is not None:
            ok &= (x >= self.lo - tol).all(1)
        if self.hi is not None:
            ok &= (x <= self.hi + tol).all(1)
        return ok

    def recentered(self, x: torch.Tensor, y: torch.Tensor) -> FeasibleSet:
        """The data-dependent set: centroids and normals re-estimated on (x, y), radii kept.

        Paper, "data-dependent defenses": ``F(D_p)`` uses ``mu_hat_y(D_p)``, the empirical
        means of ``D_c ∪ D_p``.
        """
        x = as_features(x)
        k = self.class_index(y)
        member = k[None, :] == torch.arange(len(self.classes), device=k.device)[:, None]
        if not bool(member.any(1).all()):
            raise InputError("every class of the feasible set needs at least one point")
        mu, normal, _, _ = _group_stats(x, member, self.percentile)
        return replace(self, centroids=mu, normals=normal)


def fit_feasible_set(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    defense: str = "sphere+slab",
    percentile: float = 70.0,
    box: tuple[float, float] | None = None,
) -> FeasibleSet:
    """The oracle feasible set of ``defense`` from clean data (Steinhardt et al. 2017, Sec. 3).

    Args:
        x: clean features or images, [N, D] or [N, C, H, W].
        y: integer labels, [N]; at least two classes.
        defense: ``sphere``, ``slab`` or ``sphere+slab`` (``both``).
        percentile: radii ``r_y`` / ``s_y`` keep this percentage of each clean class.
        box: ``(lo, hi)`` bounds on every coordinate (``(0, 1)`` for pixels), or None.
    """
    defense = canonical_defense(defense)
    if not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100], got {percentile}")
    x = as_features(x)
    y = torch.as_tensor(y).long().reshape(-1).to(x.device)
    if y.numel() != x.shape[0]:
        raise InputError(f"got {x.shape[0]} points but {y.numel()} labels")
    classes = torch.unique(y)
    if classes.numel() < 2:
        raise InputError("a feasible set needs data of at least two classes")
    if defense == "slab" and box is None:
        raise InputError(
            "the slab alone is unbounded along the slab; give a box (e.g. box=(0, 1) for pixels) "
            "or use sphere+slab"
        )
    if box is not None:
        lo, hi = float(box[0]), float(box[1])
        if not lo < hi:
            raise InputError(f"box must have lo < hi, got {box}")
        if float(x.min()) < lo - 1e-9 or float(x.max()) > hi + 1e-9:
            raise InputError(f"the clean data leaves the box [{lo}, {hi}]")
    else:
        lo = hi = None
    member = y[None, :] == classes[:, None]
    mu, normal, sphere, slab = _group_stats(x, member, percentile)
    return FeasibleSet(
        defense=defense,
        classes=classes,
        centroids=mu,
        normals=normal,
        sphere=sphere if "sphere" in defense else None,
        slab=slab if "slab" in defense else None,
        lo=lo,
        hi=hi,
        percentile=float(percentile),
    )
