"""Data sanitisation: keep only the training points inside a feasible set.

Steinhardt, Koh & Liang (2017), Section 2: the defender trains on ``(D_c ∪ D_p) ∩ F``. Works on
any feature matrix (raw pixels, a model's penultimate features).
"""

from __future__ import annotations

import torch

from .feasible import FeasibleSet


def sanitize(
    x: torch.Tensor, y: torch.Tensor, feasible_set: FeasibleSet, *, data_dependent: bool = False
) -> torch.Tensor:
    """Mask of the points a sanitiser keeps.

    Args:
        x: features or images, [N, D] or [N, C, H, W].
        y: labels, [N].
        feasible_set: from :func:`~trojanscope.certify.fit_feasible_set`.
        data_dependent: re-estimate the centroids on (x, y) itself, as a defender who cannot
            tell clean from poisoned points does (``F(D_p)`` of the paper); radii stay fixed.
    Returns:
        BoolTensor [N], True = kept.
    """
    fs = feasible_set.recentered(x, y) if data_dependent else feasible_set
    return fs.contains(x, y)
