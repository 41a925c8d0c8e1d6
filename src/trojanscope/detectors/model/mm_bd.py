"""MM-BD: data-free backdoor detection with a maximum-margin statistic.

Wang, Xiang, Miller & Kesidis, "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary
Backdoor Pattern Types Using a Maximum Margin Statistic" (IEEE S&P 2024; arXiv:2205.06900).

A backdoor teaches the network a feature that drives its target class's logit far above every
other logit, whatever the trigger looks like (patch, additive, blended, warped). So, for every
class ``k``, MM-BD estimates the **maximum classification margin** over the input domain
(Sec. IV-A, the maximum-margin statistic)::

    r_k = max_{x in [0,1]^D}  z_k(x) - max_{j != k} z_j(x)          (z = pre-softmax logits)

by projected gradient ascent from several random starts in ``[0,1]^D`` (the problem is not
concave; the largest margin over starts and iterations is kept). No clean image is used. A
backdoor target's ``r_k`` is abnormally large. Detection (Sec. IV-B, as in L-RED): a Gamma null
density is fitted to the statistics of all classes but the largest, and the order-statistic
p-value of the largest, ``pv = 1 - H_0(r_max)^K``, is compared with ``theta`` (0.05); the
target is ``argmax_k r_k``.

Implementation: all ``K`` classes times ``restarts`` starts are one tensor ``[K*R, C, H, W]``
optimised together (one forward/backward pass per step, chunked to ``batch_size``); the margin
is separable per image, so chunking does not change the gradient. The authors' code (public
repository ``univ_bd.py``) uses 30 random starts, 300 steps of SGD with step 1e-2 and a
relative-change stop; here the default optimiser is Adam (step ``lr`` per pixel, insensitive to
the model's logit scale) with an explicit projection onto ``[0,1]^D`` after every step,
``optimizer="sgd"`` gives the authors' plain gradient step. The Gamma null is fitted with its
location at 0 (the statistic is a margin, positive for any class the model can predict); a
non-positive margin (a class no input in the box can win) is floored at a tiny positive value
for the fit and reported in ``extra["nonpositive_margins"]``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..._params import Constraint, Interval, Options
from ..._registry import register
from ...data import ImageData
from ...errors import InputError
from ...types import ScanResult
from ...utils import model_device
from ._base import ModelDetector, ProgressFn
from .lred import gamma_order_pvalue

_OPTIMIZERS = ("adam", "sgd")


def margins(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``z_k(x) - max_{j != k} z_j(x)`` for every row, ``k = classes[row]`` (MM-BD eq. of r_k)."""
    own = logits.gather(1, classes[:, None]).squeeze(1)
    others = logits.scatter(1, classes[:, None], float("-inf")).amax(1)
    return own - others


def max_margins(model: nn.Module, in_shape: tuple[int, int, int], num_classes: int, *,
                restarts: int = 30, steps: int = 300, lr: float = 0.01, optimizer: str = "adam",
                tol: float = 1e-5, patience: int = 20, batch_size: int = 4096, seed: int = 0,
                keep: int | None = None, prune_after: int = 20,
                progress: ProgressFn | None = None) -> dict[str, Any]:
    """Estimate every class's maximum margin over ``[0,1]^D`` by projected gradient ascent.

    Args:
        model: frozen classifier returning logits.
        in_shape: (C, H, W).
        num_classes: K.
        restarts: random starts per class (R).
        steps: most ascent steps.
        lr: step size (Adam: about the per-pixel step; SGD: multiplies the raw gradient).
        optimizer: "adam" or "sgd".
        tol, patience: stop when the sum over classes of the best margins has not risen by more
            than ``tol`` (relative) for ``patience`` steps.
        batch_size: most images per forward pass.
        seed: seed of the random starts.
        keep: after ``prune_after`` steps, keep optimising only the ``keep`` starts of each class
            with the largest margins so far (the statistic is the maximum over starts, and a start
            far behind after the first steps rarely overtakes); the others keep the best margin
            they reached. None = every start to the end.
        prune_after: steps before that pruning.
        progress: optional callback.

    Returns:
        dict with ``margin`` [K] (best over starts and steps), ``margin_per_start`` [K, R],
        ``x`` [K, C, H, W] (the input reaching each class's best margin), ``steps`` (done),
        ``gradient_evaluations`` (one per optimised image per step),
        ``batched_passes`` (forward+backward passes of the batched tensor program).
    """
    dev = model_device(model)
    k, r = num_classes, restarts
    n = k * r
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *in_shape), generator=g).to(dev).requires_grad_(True)
    cls = torch.arange(k, device=dev).repeat_interleave(r)  # rows of class k: k*R .. k*R+R-1
    rows = torch.arange(n, device=dev)  # which start each row of x is (all, until pruning)
    opt = _optimizer(optimizer, x, lr)
    best = torch.full((n,), -math.inf, device=dev)
    best_x = x.detach().clone()
    total_best, stale, done, passes, grads = -math.inf, 0, 0, 0, 0
    for it in range(steps + 1):  # the last pass only evaluates the final projected point
        if keep is not None and it == prune_after and keep < r:
            x, rows, opt = _prune(x, rows, opt, best, k, r, keep, optimizer, lr)
        opt.zero_grad(set_to_none=False)
        cur = torch.empty(len(rows), device=dev)
        for lo in range(0, len(rows), batch_size):
            hi = min(len(rows), lo + batch_size)
            with torch.set_grad_enabled(it < steps):  # the last pass only evaluates
                m = margins(model(x[lo:hi]), cls[rows[lo:hi]])
            if it < steps:
                (-m.sum()).backward()  # ascent on every margin at once (separable per image)
                grads += hi - lo
            cur[lo:hi] = m.detach()
            passes += 1
        better = cur > best[rows]
        best[rows] = torch.where(better, cur, best[rows])
        best_x[rows[better]] = x.detach()[better]
        per_class = best.view(k, r).amax(1)
        total = float(per_class.sum())
        if total > total_best + tol * max(1.0, abs(total_best) if math.isfinite(total_best) else 1.0):
            total_best, stale = total, 0
        else:
            stale += 1
        if it == steps or stale >= patience:
            break
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)  # projection onto the valid input domain [0,1]^D
        done += 1
        if progress is not None and done % 25 == 0:
            progress({"stage": "mm_bd", "step": done, "steps": steps, "best_total_margin": total})
    per_start = best.view(k, r)
    arg = per_start.argmax(1)
    xs = best_x.view(k, r, *in_shape)[torch.arange(k, device=dev), arg]
    return {"margin": per_start.amax(1).double().cpu(), "margin_per_start": per_start.double().cpu(),
            "x": xs.detach().cpu(), "steps": done, "gradient_evaluations": grads,
            "batched_passes": passes}


def _optimizer(name: str, x: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam([x], lr=lr) if name == "adam" else torch.optim.SGD([x], lr=lr)


def _prune(x: torch.Tensor, rows: torch.Tensor, opt: torch.optim.Optimizer, best: torch.Tensor, k: int,
           r: int, keep: int, name: str, lr: float
           ) -> tuple[torch.Tensor, torch.Tensor, torch.optim.Optimizer]:
    """Keep the ``keep`` best starts of every class; the optimiser state follows its rows."""
    top = best.view(k, r).topk(keep, dim=1).indices + (torch.arange(k, device=best.device) * r)[:, None]
    sel = torch.isin(rows, top.flatten())  # rows are still all n starts here
    new_x = x.detach()[sel].clone().requires_grad_(True)
    new_opt = _optimizer(name, new_x, lr)
    state = opt.state.get(x, {})
    if state:
        new_opt.state[new_x] = {key: (v[sel].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                                for key, v in state.items()}
    return new_x, rows[sel], new_opt


@register("model_detector", "mm_bd")
class MMBD(ModelDetector):
    """MM-BD model scan: maximum classification margin per class, no clean data needed.

    Args:
        restarts: random starts per class (paper code: 30).
        steps: most projected-gradient-ascent steps (paper code: 300).
        lr: ascent step size (see :func:`max_margins`).
        optimizer: "adam" (default) or "sgd" (the authors' plain gradient step).
        theta: detection threshold on the order-statistic p-value (paper 0.05).
        tol, patience: early stop when the summed best margins stop rising.
        keep: after ``prune_after`` steps only the ``keep`` best starts per class go on (see
            :func:`max_margins`); None = all ``restarts`` to the end (the paper's code). The
            default 3 (after 10 steps) does 1/8 of the paper's gradient work; on the models of
            ``bench/scan_speed.py`` the target and the side of ``theta`` stay, e.g. MNIST BadNets
            margin 57.8 -> 53.9 (p 0.0002 -> 0.001) (``bench/results/scan_speed.json``).
        prune_after: steps before pruning to ``keep`` starts.
        batch_size: most images per forward pass.
        seed: seed of the random starts.
    """

    needs_data = False

    def __init__(self, *, restarts: int = 30, steps: int = 300, lr: float = 0.01,
                 optimizer: str = "adam", theta: float = 0.05, tol: float = 1e-5,
                 patience: int = 20, keep: int | None = 3, prune_after: int = 10,
                 batch_size: int = 4096, seed: int = 0) -> None:
        self.restarts = restarts
        self.steps = steps
        self.lr = lr
        self.optimizer = optimizer
        self.theta = theta
        self.tol = tol
        self.patience = patience
        self.keep = keep
        self.prune_after = prune_after
        self.batch_size = batch_size
        self.seed = seed

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "restarts": [Interval(int, 1, None)],
        "steps": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "optimizer": [Options(_OPTIMIZERS)],
        "theta": [Interval(float, 0, 1, closed="neither")],
        "tol": [Interval(float, 0, None)],
        "patience": [Interval(int, 1, None)],
        "keep": [Interval(int, 1, None), None],
        "prune_after": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "seed": [Interval(int, 0, None)],
    }

    def _scan(self, model: nn.Module, clean: ImageData, num_classes: int,
              progress: ProgressFn | None) -> ScanResult:
        # data given: MM-BD uses only its shape (the method needs no clean image)
        return self._scan_without_data(model, clean.in_shape, num_classes, progress)

    def _scan_without_data(self, model: nn.Module, in_shape: tuple[int, int, int], num_classes: int,
                           progress: ProgressFn | None) -> ScanResult:
        if num_classes < 3:
            raise InputError("MM-BD needs at least 3 classes (a null is fitted to K-1 statistics)")
        est = max_margins(model, in_shape, num_classes, restarts=self.restarts, steps=self.steps,
                          lr=self.lr, optimizer=self.optimizer, tol=self.tol,
                          patience=self.patience, batch_size=self.batch_size, seed=self.seed,
                          keep=self.keep, prune_after=self.prune_after, progress=progress)
        r = est["margin"]
        if not torch.isfinite(r).all():
            raise InputError("the model's logits were not finite on inputs in [0, 1]")
        nonpos = int((r <= 0).sum())
        floor = 1e-6 * max(1.0, float(r.abs().max()))
        test = gamma_order_pvalue(r.clamp_min(floor))
        p, t_hat = test["p_value"], test["argmax"]
        backdoored = p < self.theta
        why = _saturated(model, r)
        if why:  # the statistic is capped: the largest margins tie, the test cannot rank them
            backdoored = False
        return ScanResult(
            method="mm_bd", backdoored=backdoored, target=t_hat if backdoored else None,
            statistic=float(r[t_hat]), p_value=None if why else p, threshold=self.theta,
            statistic_key="max_margin", threshold_on="p_value",
            per_class={"max_margin": r.tolist(),
                       "median_margin_over_starts": est["margin_per_start"].median(1).values.tolist()},
            trigger={"max_margin_input": est["x"]},
            extra={"statistic": "r_max = max_k max_x z_k(x) - max_{j!=k} z_j(x), x in [0,1]^D",
                   "candidate_target": t_hat, "gamma_p_value": p,
                   "neg_log10_p": (-math.log10(p) if p > 0 else math.inf),
                   "gamma_shape": test["shape"], "gamma_scale": test["scale"],
                   "gamma_fit": "mle_floc0", "nonpositive_margins": nonpos,
                   "in_shape": list(in_shape), "restarts": self.restarts,
                   "steps_done": est["steps"], "gradient_evaluations": est["gradient_evaluations"],
                   "batched_passes": est["batched_passes"], "clean_images": 0,
                   **({"inconclusive": why} if why else {})},
        )


def _saturated(model: nn.Module, r: torch.Tensor) -> str | None:
    """Why the margins cannot be compared, or None.

    A model that outputs probabilities is scanned through ``log p`` (:class:`LogOutput`); the
    margin of log-probabilities equals the logit margin only until the smaller probabilities
    reach the wrapper's floor ``eps``: beyond it every margin is capped at ``-log eps``. When two
    or more classes reach the cap, the largest statistic is a tie and no p-value means anything.
    """
    from ...models._logits import LogOutput

    log = next((m for m in model.modules() if isinstance(m, LogOutput)), None)  # also inside a wrapper
    if log is None:
        return None
    cap = -math.log(log.eps)
    n = int((r >= cap - 1e-2 * max(1.0, cap / 100)).sum())
    if n < 2:
        return None
    return (f"the model outputs probabilities, and {n} classes reach the largest margin that "
            f"log-probabilities can show ({cap:.1f}); MM-BD needs the logits (pre-softmax "
            "outputs) to compare classes: scan the model without its softmax layer")


__all__ = ["MMBD", "margins", "max_margins"]
