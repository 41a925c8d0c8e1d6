"""Evasion attacks: FGSM, I-FGSM/BIM, PGD (Linf, L2) and Carlini-Wagner L2.

Batched over samples (one target per sample for targeted attacks), on the model's device; the
model is frozen while they run (see :class:`~trojanscope.attacks._evasion_base.EvasionAttack`).
Used by the input guards' benchmarks (adversarial examples as a second kind of malicious input,
Jin et al.) and by Borji's bias maps (iterated FGSM, Borji eq. 1).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .._params import Boolean, Constraint, Interval, Options
from .._registry import register
from ..errors import InputError
from ._evasion_base import EvasionAttack, lp_norm, objective_grad
from ._images import SEED, lower

_POSITIVE = Interval(float, 0, None, closed="neither")
_STEPS = Interval(int, 1, None)


def _iterate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
             g: torch.Generator, *, eps: float, steps: int, step_size: float, norm: str,
             random_start: bool) -> torch.Tensor:
    """Projected gradient ascent on the objective (Madry et al. 2018 eq. 2; Kurakin et al. 2017).

    Linf steps are ``step_size * sign(grad)``; L2 steps are ``step_size * grad / ||grad||_2``.
    After each step the perturbation is projected on the eps-ball and the image clipped to [0, 1].
    """
    delta = torch.zeros_like(x)
    if random_start:
        if norm == "linf":
            delta = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps
        else:  # uniform in the L2 ball: a random direction, radius eps * u^(1/d)
            d = x[0].numel()
            direction = torch.randn(x.shape, generator=g, device=x.device)
            direction = direction / lp_norm(direction, "l2").clamp_min(1e-12).view(-1, 1, 1, 1)
            radius = eps * torch.rand(len(x), generator=g, device=x.device) ** (1.0 / d)
            delta = direction * radius.view(-1, 1, 1, 1)
        delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        grad = objective_grad(model, x + delta, labels, targeted)
        if norm == "linf":
            delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
        else:
            delta = delta + step_size * grad / lp_norm(grad, "l2").clamp_min(1e-12).view(-1, 1, 1, 1)
            scale = (eps / lp_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * scale.view(-1, 1, 1, 1)
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


@register("evasion", "fgsm")
class FGSM(EvasionAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): ``clip(x + eps * sign(grad))``;
    targeted: ``clip(x - eps * sign(grad_x J(x, t)))`` (Borji eq. 1).

    Args:
        eps: Linf size of the step (> 0).
        batch_size: samples per batch.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {"eps": [_POSITIVE]}

    def __init__(self, *, eps: float = 0.3, batch_size: int = 256) -> None:
        self.eps = eps
        self.batch_size = batch_size

    def _check(self) -> dict[str, Any]:
        return {"eps": float(self.eps)}

    def _run(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
             g: torch.Generator, p: dict[str, Any]) -> torch.Tensor:
        return x + p["eps"] * objective_grad(model, x, labels, targeted).sign()


@register("evasion", "pgd")
class PGD(EvasionAttack):
    """Projected gradient descent (Madry et al. 2018), Linf or L2, with a random start.

    Args:
        eps: radius of the perturbation ball (> 0).
        steps: iterations.
        step_size: size of each step (Linf: per pixel; L2: of the whole step).
        norm: "linf" or "l2".
        random_start: start from a uniform random point of the ball.
        seed: seed of the random start.
        batch_size: samples per batch.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "eps": [_POSITIVE],
        "steps": [_STEPS],
        "step_size": [_POSITIVE],
        "norm": [Options(("linf", "l2"), normalize=lower)],
        "random_start": [Boolean()],
        "seed": [SEED],
    }

    def __init__(self, *, eps: float = 0.3, steps: int = 40, step_size: float = 0.01,
                 norm: str = "linf", random_start: bool = True, seed: int = 0,
                 batch_size: int = 256) -> None:
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.norm = norm
        self.random_start = random_start
        self.seed = seed
        self.batch_size = batch_size

    def _check(self) -> dict[str, Any]:
        return {"eps": float(self.eps), "steps": int(self.steps), "step_size": float(self.step_size),
                "norm": lower(self.norm), "random_start": self.random_start}

    def _run(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
             g: torch.Generator, p: dict[str, Any]) -> torch.Tensor:
        return _iterate(model, x, labels, targeted, g, **p)


@register("evasion", "bim")
class BIM(EvasionAttack):
    """Basic iterative method / I-FGSM (Kurakin et al. 2017): FGSM steps of ``step_size``,
    clipped to the Linf eps-ball around x and to [0, 1]; no random start.

    Borji's bias maps iterate FGSM this way (Borji sec. 2, eq. 1); ``eps=float("inf")`` leaves the
    perturbation unbounded apart from the [0, 1] range.

    Args:
        eps: Linf radius (> 0; ``float("inf")`` for none).
        steps: iterations.
        step_size: per-step size; None = ``eps / steps`` (which must then be finite).
        batch_size: samples per batch.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "eps": [Interval(float, 0, None, closed="neither", allow_inf=True)],
        "steps": [_STEPS],
        "step_size": [_POSITIVE, None],
    }

    def __init__(self, *, eps: float = 0.3, steps: int = 10, step_size: float | None = None,
                 batch_size: int = 256) -> None:
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.batch_size = batch_size

    def _check(self) -> dict[str, Any]:
        eps, steps = float(self.eps), int(self.steps)
        if self.step_size is None:
            if eps == float("inf"):
                raise InputError(f"{self.name}: give step_size when eps is unbounded")
            step = eps / steps
        else:
            step = float(self.step_size)
        return {"eps": eps, "steps": steps, "step_size": step, "norm": "linf", "random_start": False}

    def _run(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
             g: torch.Generator, p: dict[str, Any]) -> torch.Tensor:
        return _iterate(model, x, labels, targeted, g, **p)


@register("evasion", "ifgsm")
class IFGSM(BIM):
    """I-FGSM, another name of :class:`BIM` (Kurakin et al. 2017)."""


@register("evasion", "cw")
class CarliniWagnerL2(EvasionAttack):
    """Carlini & Wagner's L2 attack (Carlini and Wagner 2017, sec. V-A).

    Minimises ``||x' - x||_2^2 + c * f(x')`` over ``x' = (tanh(w) + 1) / 2`` (the change of
    variables that keeps x' in [0, 1]) with Adam, where ``f`` is their objective 6:
    ``max(max_{i != t} Z_i - Z_t, -kappa)`` (targeted) or ``max(Z_y - max_{i != y} Z_i, -kappa)``
    (untargeted), Z the logits. A binary search per sample finds the smallest ``c`` that succeeds
    (c is multiplied by 10 until a first success). Returns the successful example of least L2
    norm, or the unchanged image where no ``c`` succeeded. The defaults are set for a CPU (the
    paper: 9 binary-search steps, 10000 iterations, lr 0.01, c0 = 1e-3); on 16x16 digits they
    give 100% success untargeted and targeted.

    Args:
        steps: Adam iterations per value of c.
        binary_search_steps: values of c tried per sample.
        initial_const: the first c.
        kappa: confidence margin (logit gap) required for success.
        lr: Adam learning rate.
        abort_early: stop an inner loop when the loss has stopped decreasing (checked every
            ``steps // 10`` iterations).
        batch_size: samples per batch.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "steps": [_STEPS],
        "binary_search_steps": [_STEPS],
        "initial_const": [_POSITIVE],
        "kappa": [Interval(float, 0, None)],
        "lr": [_POSITIVE],
        "abort_early": [Boolean()],
    }

    def __init__(self, *, steps: int = 100, binary_search_steps: int = 5,
                 initial_const: float = 1.0, kappa: float = 0.0, lr: float = 0.05,
                 abort_early: bool = True, batch_size: int = 256) -> None:
        self.steps = steps
        self.binary_search_steps = binary_search_steps
        self.initial_const = initial_const
        self.kappa = kappa
        self.lr = lr
        self.abort_early = abort_early
        self.batch_size = batch_size

    def _check(self) -> dict[str, Any]:
        return {"steps": int(self.steps), "bsteps": int(self.binary_search_steps),
                "c0": float(self.initial_const), "kappa": float(self.kappa), "lr": float(self.lr),
                "abort_early": self.abort_early}

    def _run(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
             g: torch.Generator, p: dict[str, Any]) -> torch.Tensor:
        n, kappa = len(x), p["kappa"]
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        lo = torch.zeros(n, device=x.device)
        hi = torch.full((n,), float("inf"), device=x.device)
        c = torch.full((n,), p["c0"], device=x.device)
        best_l2 = torch.full((n,), float("inf"), device=x.device)
        best = x.clone()
        check_every = max(p["steps"] // 10, 1)
        for _ in range(p["bsteps"]):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=p["lr"])
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            prev = float("inf")
            for it in range(p["steps"]):
                with torch.enable_grad():
                    xa = (torch.tanh(w) + 1) / 2
                    z = model(xa)
                    own = z.gather(1, labels[:, None])[:, 0]
                    other = z.scatter(1, labels[:, None], float("-inf")).amax(1)
                    # margin > kappa means success: target ahead (targeted) or label behind
                    margin = own - other if targeted else other - own
                    l2 = (xa - x).flatten(1).pow(2).sum(1)
                    loss = (l2 + c * (-margin).clamp(min=-kappa)).sum()
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                with torch.no_grad():
                    ok = margin.detach() > kappa
                    better = ok & (l2.detach() < best_l2)
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best[better] = xa.detach()[better]
                    succeeded |= ok
                if p["abort_early"] and it % check_every == check_every - 1:
                    if float(loss.detach()) > prev * 0.9999:
                        break
                    prev = float(loss.detach())
            hi = torch.where(succeeded, torch.minimum(hi, c), hi)
            lo = torch.where(succeeded, lo, torch.maximum(lo, c))
            c = torch.where(torch.isinf(hi), c * 10, (lo + hi) / 2)
        return best
