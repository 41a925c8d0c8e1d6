"""``Certifier``: bound, candidate attack and its achieved loss for each (defence, eps).

Steinhardt, Koh & Liang (2017). Binary problems directly; more than two classes one-vs-rest
(class k = +1 against the rest), all problems batched. Per eps it runs Algorithm 1 for
``T = round(eps n)`` steps, trains the model of Proposition 1 on ``D_c ∪ D_p`` (its loss is the
lower end of eq. 6) and the defender's model on the sanitised ``(D_c ∪ D_p) ∩ F`` (its test loss
and error are what the candidate attack achieves).

``upper_bound`` is the smallest ``U(theta; eps) = (1/n) L(theta; D_c) + eps max_F l(theta)`` over
every iterate of every eps run and the clean model: each is a valid upper bound on ``M`` (the
inner maximum is solved exactly), and taking them all makes the reported bound non-decreasing in
eps. ``extra["upper_bound_alg1"]`` is the U* of that eps' own run, the quantity of eq. 6.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from ..errors import InputError
from ..types import Certificate
from .bound import Alg1Run, StackedSets, algorithm1
from .feasible import FeasibleSet, as_features, canonical_defense, fit_feasible_set
from .svm import hinge, margins, train_svm, train_svm_liblinear

# The authors' settings for MNIST-1-7 (released code): ||theta||^2 <= 0.8, eta 0.1, percentile 70.
DEFAULT_RHO = math.sqrt(0.8)


class Certifier:
    """Certified defence of Steinhardt et al. (2017) for a linear SVM.

    Args:
        defense: ``sphere``, ``slab`` or ``sphere+slab`` (``both``).
        percentile: radii keep this percentage of each clean class (paper's code: 70).
        rho: radius of the parameter ball ``||(w, b)|| <= rho`` (paper's code, MNIST-1-7: sqrt(0.8)).
        eta: dual-averaging step size, ``lambda_0 = 1 / eta`` (paper's code, MNIST-1-7: 0.1).
        box: ``(lo, hi)`` of every feature (``(0, 1)`` for pixels) or None.
        data_dependent: also run the modified Algorithm 1 against the data-dependent sanitiser
            (centroids from clean + poisoned data) and add its rows (no guarantee: see bound.py).
        max_steps: cap on Algorithm 1's steps T (None: ``T = eps n`` as in the paper). With a cap,
            each candidate point stands for ``eps n / T`` attack points (a weight in training);
            Proposition 1 then holds with ``Regret(T) / T`` (the average of the T online losses is
            the same objective), the bound stays valid, only the regret gap is looser.
        solver: ``liblinear`` (default: penalised SVM by dual coordinate descent, bisection on C
            to the ball's radius; accurate) or ``fista`` (smoothed hinge, projected; no sklearn).
        train_iters: FISTA iterations of every SVM training (``fista`` only).
        smoothing: hinge smoothing of the FISTA trainer.
    """

    def __init__(
        self,
        *,
        defense: str = "sphere+slab",
        percentile: float = 70.0,
        rho: float = DEFAULT_RHO,
        eta: float = 0.1,
        box: tuple[float, float] | None = (0.0, 1.0),
        data_dependent: bool = False,
        max_steps: int | None = None,
        solver: str = "liblinear",
        train_iters: int = 800,
        smoothing: float = 1e-4,
    ) -> None:
        self.defense = defense
        self.percentile = percentile
        self.rho = rho
        self.eta = eta
        self.box = box
        self.data_dependent = data_dependent
        self.max_steps = max_steps
        self.solver = solver
        self.train_iters = train_iters
        self.smoothing = smoothing

    def _params(self) -> dict:
        return {"defense": canonical_defense(self.defense), "percentile": self.percentile, "rho": self.rho,
                "eta": self.eta, "box": self.box, "data_dependent": self.data_dependent,
                "max_steps": self.max_steps, "solver": self.solver}

    def _train(self, x, y, weights, theta0=None, iters=None):
        if self.solver == "liblinear":
            return train_svm_liblinear(x, y, rho=self.rho, weights=weights)
        if self.solver != "fista":
            raise InputError(f"unknown solver {self.solver!r}; use liblinear or fista")
        return train_svm(x, y, rho=self.rho, weights=weights, smoothing=self.smoothing,
                         iters=iters or self.train_iters, theta0=theta0)

    def certify(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: Sequence[float],
        x_test: torch.Tensor | None = None,
        y_test: torch.Tensor | None = None,
        *,
        classes: Sequence[int] | None = None,
        callback: Callable[[str], None] | None = None,
    ) -> list[Certificate]:
        """Certificates for every eps (and every class, one-vs-rest, with > 2 classes).

        Args:
            x: clean training features or images, [n, D] or [n, C, H, W].
            y: labels, [n].
            eps: poisoned fractions (attacker adds ``eps n`` points).
            x_test, y_test: held-out data for the achieved test loss/error (default: training).
            classes: the classes to use (default all in y). Two classes: the first is y = +1.
            callback: receives progress lines.
        Returns:
            One :class:`~trojanscope.types.Certificate` per (class problem, eps), oracle rows
            first, then data-dependent rows when ``data_dependent``.
        """
        log = callback or (lambda s: None)
        defense = canonical_defense(self.defense)
        if self.rho <= 0 or self.eta <= 0:
            raise InputError("rho and eta must be positive")
        eps = [float(e) for e in eps]
        if not eps or any(not 0 <= e < 1 for e in eps):
            raise InputError(f"eps must be fractions in [0, 1), got {eps}")
        # a linear model on a feature matrix: float64 on the CPU, whatever device the data is on
        X = as_features(x).cpu()
        yl = torch.as_tensor(y).long().reshape(-1).cpu()
        Xt = X if x_test is None else as_features(x_test, "test features").cpu()
        ytl = yl if y_test is None else torch.as_tensor(y_test).long().reshape(-1).cpu()
        if Xt.shape[1] != X.shape[1]:
            raise InputError("training and test features differ in dimension")
        cls = [int(c) for c in (classes if classes is not None else torch.unique(yl).tolist())]
        if len(cls) < 2 or len(set(cls)) != len(cls):
            raise InputError(f"need at least two distinct classes, got {cls}")
        keep, keep_t = torch.isin(yl, torch.tensor(cls)), torch.isin(ytl, torch.tensor(cls))
        X, yl, Xt, ytl = X[keep], yl[keep], Xt[keep_t], ytl[keep_t]
        missing = [c for c in cls if not bool((yl == c).any())]
        if missing:
            raise InputError(f"no training points of class(es) {missing}")
        if len(Xt) == 0:
            raise InputError("no test points of the chosen classes")
        positives = cls[:1] if len(cls) == 2 else cls
        pos = torch.tensor(positives)
        Y = torch.where(yl[None] == pos[:, None], 1.0, -1.0).to(torch.float64)  # [P, n]
        Yt = torch.where(ytl[None] == pos[:, None], 1.0, -1.0).to(torch.float64)
        sets = [fit_feasible_set(X, (Y[p] > 0).long(), defense=defense, percentile=self.percentile,
                                 box=self.box) for p in range(len(positives))]
        stacked = StackedSets.of(sets)
        n = X.shape[0]
        log(f"{defense}: n={n}, D={X.shape[1]}, problems={len(positives)}")

        theta_clean = self._train(X, Y, None, iters=2 * self.train_iters)  # the warm start of all
        pool_a = [hinge(theta_clean, X, Y).mean(1, keepdim=True)]
        pool_b = [stacked.worst(theta_clean)[2][:, None]]
        runs: dict[float, Alg1Run] = {}
        for e in sorted(set(eps)):
            T = self._steps(e, n)
            if T == 0:
                continue
            t0 = time.perf_counter()
            runs[e] = algorithm1(X, Y, stacked, steps=T, eps=round(e * n) / n, rho=self.rho, eta=self.eta)
            pool_a.append(runs[e].clean_loss)
            pool_b.append(runs[e].worst_loss)
            log(f"{defense} eps={e}: {T} steps of Algorithm 1 in {time.perf_counter() - t0:.1f}s")
        pa, pb = torch.cat(pool_a, 1), torch.cat(pool_b, 1)

        out: list[Certificate] = []
        for e in eps:
            upper = (pa + e * pb).min(1).values
            ev = self._evaluate(X, Y, Xt, Yt, sets, runs.get(e), theta_clean, data_dependent=False)
            out += self._rows(defense, e, n, positives, upper, ev, runs.get(e), cls)
        if self.data_dependent:
            for e in eps:
                T = self._steps(e, n)
                run = None
                if T:
                    run = algorithm1(X, Y, stacked, steps=T, eps=round(e * n) / n, rho=self.rho, eta=self.eta,
                                     data_dependent=True)
                ev = self._evaluate(X, Y, Xt, Yt, sets, run, theta_clean, data_dependent=True)
                if e in runs:  # the oracle's candidate attack against the data-dependent sanitiser
                    ev_o = self._evaluate(X, Y, Xt, Yt, sets, runs[e], theta_clean, data_dependent=True)
                    ev["oracle_attack_loss"] = ev_o["test_loss"]
                    ev["oracle_attack_error"] = ev_o["test_error"]
                upper = run.upper if run is not None else (pa.min(1).values)
                out += self._rows(f"{defense} (data-dependent)", e, n, positives, upper, ev, run, cls)
                log(f"{defense} data-dependent eps={e} done")
        return out

    def _steps(self, e: float, n: int) -> int:
        T = round(e * n)
        return T if self.max_steps is None else min(T, int(self.max_steps))

    def _evaluate(self, X, Y, Xt, Yt, sets: list[FeasibleSet], run: Alg1Run | None, theta_clean,
                  *, data_dependent: bool) -> dict:
        """Train on D_c ∪ D_p (Prop. 1) and on the sanitised set (the defender); test both."""
        P, n = Y.shape
        if run is None:
            xa, ya, w_all = X, Y, torch.ones_like(Y)
            is_p = torch.zeros(n, dtype=torch.bool)
        else:
            T = run.x_p.shape[1]
            xa = torch.cat([X, run.x_p.reshape(P * T, -1)])
            own = torch.zeros(P, P * T, dtype=X.dtype)
            for p in range(P):  # each problem sees only its own poison block
                own[p, p * T:(p + 1) * T] = run.weight  # eps n / T attack points per candidate
            ya = torch.cat([Y, run.y_p.repeat(1, P)], dim=1)
            w_all = torch.cat([torch.ones_like(Y), own], dim=1)
            is_p = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(P * T, dtype=torch.bool)])
        kept = torch.zeros_like(w_all, dtype=torch.bool)
        for p in range(P):
            rows = w_all[p] > 0
            lab = (ya[p, rows] > 0).long()
            fs = sets[p].recentered(xa[rows], lab) if data_dependent else sets[p]
            kept[p, rows] = fs.contains(xa[rows], lab)
        if run is None:
            theta_tilde = theta_clean
        else:
            # min over theta of (1/n) L(theta; D_c ∪ D_p): start from the better of the clean
            # model and Algorithm 1's average iterate, keep the better of start and result (any
            # theta's loss is >= the minimum, so this only tightens the Prop.-1 lower end)
            starts = torch.stack([theta_clean, run.theta_avg])  # [2, P, D+1]
            obj = torch.stack([(hinge(t, xa, ya) * w_all).sum(1) for t in starts])
            start = starts[obj.argmin(0), torch.arange(P)]
            trained = self._train(xa, ya, w_all, start)
            better = (hinge(trained, xa, ya) * w_all).sum(1) <= obj.min(0).values
            theta_tilde = torch.where(better[:, None], trained, start)
        lower = (hinge(theta_tilde, xa, ya) * w_all).sum(1) / n
        theta_hat = self._train(xa, ya, w_all * kept, theta_tilde)
        n_p = (w_all[:, is_p] > 0).sum(1).clamp(min=1)  # distinct candidate points
        return {
            "lower": lower,
            "test_loss": hinge(theta_hat, Xt, Yt).mean(1),
            "test_error": (margins(theta_hat, Xt, Yt) <= 0).double().mean(1),
            "test_loss_unsanitized": hinge(theta_tilde, Xt, Yt).mean(1),
            "test_error_unsanitized": (margins(theta_tilde, Xt, Yt) <= 0).double().mean(1),
            "clean_kept": kept[:, :n].double().mean(1),
            "poison_kept": (kept[:, is_p] & (w_all[:, is_p] > 0)).sum(1) / n_p,
        }

    def _rows(self, defense, e, n, positives, upper, ev, run, cls) -> list[Certificate]:
        rows = []
        for p, k in enumerate(positives):
            extra = {
                "class": int(k) if len(cls) > 2 else None,
                "classes": cls if len(cls) == 2 else [int(k), "rest"],
                "n": n,
                "n_poison": 0 if run is None else round(run.weight * run.x_p.shape[1]),
                "steps": 0 if run is None else int(run.x_p.shape[1]),
                "attack_loss_unsanitized": float(ev["test_loss_unsanitized"][p]),
                "attack_error_unsanitized": float(ev["test_error_unsanitized"][p]),
                "clean_kept": float(ev["clean_kept"][p]),
            }
            if run is not None:
                u_t = run.clean_loss[p] + (run.weight * run.x_p.shape[1] / n) * run.worst_loss[p]
                extra.update({
                    "upper_bound_alg1": float(run.upper[p]),
                    "poison_kept": float(ev["poison_kept"][p]),
                    "regret_per_step": float(u_t.mean() - ev["lower"][p]),
                    "regret_bound_per_step": float(run.regret_bound[p] / run.x_p.shape[1]),
                    "distinct_attack_points": int(torch.unique(run.x_p[p], dim=0).shape[0]),
                    "attack_labels_positive": float((run.y_p[p] > 0).double().mean()),
                })
            for key in ("oracle_attack_loss", "oracle_attack_error"):
                if key in ev:
                    extra[key] = float(ev[key][p])
            if "data-dependent" in defense:
                extra["note"] = ("heuristic: the feasible set moves with the poison, the inner max is "
                                 "not solved exactly, so upper_bound is an estimate, not a certificate")
            rows.append(Certificate(
                defense=defense, eps=e, upper_bound=float(upper[p]),
                attack_loss=float(ev["test_loss"][p]), attack_error=float(ev["test_error"][p]),
                lower_bound=float(ev["lower"][p]), extra=extra, params=self._params(),
            ))
        return rows
