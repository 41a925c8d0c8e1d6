"""Robust outlier statistics shared by the model detectors.

The median absolute deviation (MAD) test of Neural Cleanse (Wang et al., S&P 2019, Sec. IV-C,
after Hampel 1974): with ``med = median(v)`` and ``MAD = median(|v - med|)``, the anomaly index
of a value is ``|v - med| / (1.4826 * MAD)``. The consistency constant 1.4826 makes
``1.4826 * MAD`` estimate the standard deviation of normally distributed data, so an index above
2 marks an outlier with > 95% probability.

API (three functions, tensors in, tensors out):

- :func:`robust_z` — signed robust z-scores ``(v - med) / (1.4826 * MAD)``;
- :func:`anomaly_index` — ``|robust_z|``, or the one-sided index of the small (or large) side;
- :func:`small_outlier` — the smallest value, its one-sided index and whether it exceeds the
  threshold (the Neural Cleanse decision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import InputError

#: Consistency constant: 1.4826 * MAD estimates the standard deviation of a normal sample.
MAD_CONSISTENCY = 1.4826
#: Neural Cleanse's decision threshold on the anomaly index.
ANOMALY_THRESHOLD = 2.0


def _as_values(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu().flatten()
    if v.numel() < 3:
        raise InputError(f"an outlier test needs at least 3 values, got {v.numel()}")
    if not torch.isfinite(v).all():
        raise InputError("an outlier test got NaN or infinite values")
    return v


def robust_z(values: torch.Tensor | Sequence[float], consistency: float = MAD_CONSISTENCY) -> torch.Tensor:
    """Signed robust z-scores ``(v - median) / (consistency * MAD)``.

    The median is the midpoint of the two central values for an even count (as numpy's). When
    MAD is 0 (over half the values equal) the scale falls back to a tiny positive number so
    that equal values score 0 and any different value scores very large.

    Args:
        values: [N] values (N >= 3).
        consistency: the factor making ``consistency * MAD`` a standard deviation estimate.

    Returns:
        float64 [N] scores (positive = above the median).
    """
    v = _as_values(values)
    med = torch.quantile(v, 0.5)
    mad = torch.quantile((v - med).abs(), 0.5)
    scale = consistency * mad
    if scale <= 0:
        scale = torch.tensor(1e-12, dtype=v.dtype) * max(1.0, float(v.abs().max()))
    return (v - med) / scale


def anomaly_index(values: torch.Tensor | Sequence[float], side: str = "both",
                  consistency: float = MAD_CONSISTENCY) -> torch.Tensor:
    """MAD anomaly index of every value (Neural Cleanse, Sec. IV-C).

    Args:
        values: [N] values.
        side: ``"both"`` for ``|z|``; ``"small"`` for ``-z`` (positive below the median, the side
            of Neural Cleanse's small trigger norms); ``"large"`` for ``z``.
        consistency: see :func:`robust_z`.

    Returns:
        float64 [N] anomaly indices.
    """
    z = robust_z(values, consistency)
    if side == "both":
        return z.abs()
    if side == "small":
        return -z
    if side == "large":
        return z
    raise InputError(f"side must be 'both', 'small' or 'large', got {side!r}")


def small_outlier(values: torch.Tensor | Sequence[float], threshold: float = ANOMALY_THRESHOLD
                  ) -> tuple[int, float, bool]:
    """The Neural Cleanse decision: is the smallest value an outlier below the others?

    Args:
        values: [N] values, e.g. the L1 norms of the reversed masks of N labels.
        threshold: anomaly-index threshold (2 in the paper).

    Returns:
        ``(index of the smallest value, its small-side anomaly index, index > threshold)``.
    """
    idx = anomaly_index(values, side="small")
    i = int(torch.argmin(_as_values(values)))
    a = float(idx[i])
    return i, a, a > threshold


_NULL_CACHE: dict[tuple[int, str, int, int], torch.Tensor] = {}


def max_index_null(n: int, side: str = "small", draws: int = 20_000, seed: int = 0) -> torch.Tensor:
    """Simulated null distribution of the largest one-sided anomaly index among ``n`` values.

    Under the Gaussian model that the MAD test itself assumes (the 1.4826 constant makes
    ``1.4826 * MAD`` a normal standard deviation), ``n`` i.i.d. normal values are drawn
    ``draws`` times and the largest index of each draw is kept. This accounts for both the
    multiplicity (the smallest of ``n`` values is tested, not a fixed one) and the noise of the
    median and MAD estimated from only ``n`` values, which a normal tail with a Sidak
    correction ignores (it is anti-conservative for n = 10 classes). Seeded: the same
    ``(n, side, draws, seed)`` always gives the same null.

    Returns:
        float64 [draws] sorted ascending.
    """
    if n < 3:
        raise InputError(f"an outlier test needs at least 3 values, got {n}")
    if side not in ("small", "large"):
        raise InputError(f"side must be 'small' or 'large', got {side!r}")
    key = (int(n), side, int(draws), int(seed))
    if key not in _NULL_CACHE:
        g = torch.Generator().manual_seed(seed)
        chunk = max(1, 2_000_000 // n)
        parts = []
        for i in range(0, draws, chunk):
            z = torch.randn(min(chunk, draws - i), n, generator=g, dtype=torch.float64)
            med = z.quantile(0.5, dim=1, keepdim=True)
            mad = (z - med).abs().quantile(0.5, dim=1, keepdim=True) * MAD_CONSISTENCY
            ext = (med - z.amin(1, keepdim=True)) if side == "small" else (z.amax(1, keepdim=True) - med)
            parts.append((ext / mad).flatten())
        _NULL_CACHE[key] = torch.cat(parts).sort().values
    return _NULL_CACHE[key]


def max_index_pvalue(index: float, n: int, side: str = "small", draws: int = 20_000) -> float:
    """p-value of an observed largest one-sided anomaly index among ``n`` values.

    ``(1 + #{null >= index}) / (1 + draws)`` with the simulated null of :func:`max_index_null`
    (a Monte Carlo p-value, valid for the Gaussian null; its smallest value is 1 / (draws + 1)).
    """
    if index != index:  # NaN
        return 1.0
    null = max_index_null(n, side, draws)
    above = int(null.numel() - torch.searchsorted(null, torch.tensor([float(index)], dtype=null.dtype),
                                                  right=False).item())
    return (1 + above) / (1 + null.numel())
