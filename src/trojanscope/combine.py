"""Combining the p-values of several detectors into one verdict, validly when they are dependent.

Every method of a scan looks at the same model with the same clean images, so their p-values
are dependent (often strongly: two trigger-reversal methods see the same small trigger). Fisher's
or Stouffer's rules assume independence and over-reject under positive dependence; this module
offers two rules that do not:

- ``"cauchy"`` (default): the Cauchy combination test, Liu & Xie, "Cauchy Combination Test: A
  Powerful Test With Analytic p-Value Calculation Under Arbitrary Dependency Structures", JASA
  115 (2020), eq. (1)-(2): ``T = sum_i w_i tan((0.5 - p_i) pi)`` with weights summing to 1, and
  ``p = 1/2 - arctan(T) / pi``. Each term is standard Cauchy under its null whatever the
  dependence; the tail of ``T`` stays (asymptotically, for small levels) standard Cauchy under
  arbitrary dependence (their Theorem 1 for bivariate-normal dependence, and simulations
  beyond). Its power is near that of the best single test.
- ``"holm"``: Holm's step-down procedure (Holm 1979, Scand. J. Statist. 6:65-70), valid under
  any dependence; the global p-value is Bonferroni's ``min(1, m * min_i p_i)``, and the
  per-method adjusted p-values say which methods are individually significant.

The verdict rules (:func:`combine_evidence`) are documented in ``docs/scan.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

RULES = ("cauchy", "holm")

# Below this, tan((0.5 - p) pi) loses precision: use its expansion 1 / (p pi) (Liu & Xie sec. 2.2)
_SMALL = 1e-15


def _check_p(pvalues: Sequence[float]) -> list[float]:
    ps = [float(p) for p in pvalues]
    if not ps:
        raise InputError("no p-values to combine")
    for p in ps:
        if not (0.0 <= p <= 1.0):  # also refuses NaN
            raise InputError(f"p-values must be in [0, 1], got {p}")
    return ps


def cauchy_combination(pvalues: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """The Cauchy combination test's p-value (Liu & Xie 2020, eqs. 1-2).

    Args:
        pvalues: m p-values in [0, 1], of any dependence.
        weights: m non-negative weights (normalised to sum 1); default equal.

    Returns:
        The combined p-value in [0, 1]. A p-value of 0 gives 0; when some p-value is 1 (its
        term would be -inf) the Bonferroni p-value ``min(1, m * min p)`` is returned instead.
    """
    ps = _check_p(pvalues)
    w = [1.0] * len(ps) if weights is None else [float(v) for v in weights]
    if len(w) != len(ps) or any(v < 0 or not math.isfinite(v) for v in w) or sum(w) <= 0:
        raise InputError("weights must be one non-negative finite number per p-value, not all 0")
    s = sum(w)
    w = [v / s for v in w]
    if any(p == 0.0 and wi > 0 for p, wi in zip(ps, w, strict=True)):
        return 0.0
    if any(p >= 1.0 - 1e-12 and wi > 0 for p, wi in zip(ps, w, strict=True)):
        # tan((0.5 - 1) pi) = -inf: one p-value of 1 would cancel any evidence. As the authors'
        # ACAT software does, fall back to Bonferroni (valid under any dependence)
        return min(1.0, len(ps) * min(ps))
    t = 0.0
    for p, wi in zip(ps, w, strict=True):
        if p < _SMALL:
            t += wi / (p * math.pi)
        else:
            t += wi * math.tan((0.5 - min(p, 1.0 - 1e-16)) * math.pi)
    if t > 1e15:  # the same expansion on the way back: 1/2 - arctan(T)/pi ~ 1 / (T pi)
        return 1.0 / (t * math.pi)
    return min(1.0, max(0.0, 0.5 - math.atan(t) / math.pi))


def holm_adjusted(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order; valid under any
    dependence. Method i is significant at level alpha when its adjusted p-value <= alpha."""
    ps = _check_p(pvalues)
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adj[i] = running
    return adj


def combine_pvalues(pvalues: Sequence[float], rule: str = "cauchy") -> float:
    """The global p-value of "at least one method's null is false" under ``rule``."""
    if rule == "cauchy":
        return cauchy_combination(pvalues)
    if rule == "holm":
        return min(holm_adjusted(pvalues))
    raise InputError(f"unknown combination rule {rule!r}; use one of {', '.join(RULES)}")


@dataclass
class Evidence:
    """One method's evidence for the combined verdict.

    Attributes:
        method: registry name.
        p_value: its calibrated p-value, or None when it has none (it then cannot vote).
        target: the class it points at (its detected target, or its candidate when it does not
            flag the model), or None.
        sources: source classes it names.
        flagged: its own verdict (the method's paper rule).
    """

    method: str
    p_value: float | None
    target: int | None = None
    sources: list[int] = field(default_factory=list)
    flagged: bool = False


@dataclass
class CombinedVerdict:
    """The one verdict of a scan.

    Attributes:
        verdict: ``"clean"``, ``"backdoored"`` or ``"inconclusive"``.
        p_value: the combined p-value (None when no method gave one).
        rule: ``"cauchy"`` or ``"holm"``.
        alpha: the significance level.
        target: the agreed target class (backdoored only).
        sources: the union of the sources named by the methods that agree on the target.
        supporting: methods whose evidence points at the verdict (and the target).
        disagreeing: ``{"method", "why"}`` for every method that says otherwise.
        reason: one plain sentence explaining the verdict.
        hint: what the user can do (inconclusive verdicts), or None.
    """

    verdict: str
    p_value: float | None
    rule: str
    alpha: float
    target: int | None = None
    sources: list[int] = field(default_factory=list)
    supporting: list[str] = field(default_factory=list)
    disagreeing: list[dict[str, str]] = field(default_factory=list)
    reason: str = ""
    hint: str | None = None

    @property
    def exit_code(self) -> int:
        """0 clean, 1 backdoored, 3 inconclusive (2 is an error, never a verdict)."""
        return {"clean": 0, "backdoored": 1}.get(self.verdict, 3)

    def to_dict(self) -> dict[str, Any]:
        from .utils import to_jsonable

        out: dict[str, Any] = to_jsonable({k: getattr(self, k) for k in self.__dataclass_fields__} |
                                          {"exit_code": self.exit_code})
        return out


def _fmt(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def combine_evidence(evidence: Sequence[Evidence], *, alpha: float = 0.05, rule: str = "cauchy",
                     failed: Sequence[str] = ()) -> CombinedVerdict:
    """One verdict from the methods' evidence.

    - No method with a p-value: ``inconclusive``.
    - Combined p < alpha: ``backdoored``. The agreed target is the class with the largest
      share of the combined statistic: each method adds ``tan((0.5 - p) pi)`` (Cauchy) or
      ``-log p`` (Holm) to the class it points at. Methods pointing elsewhere, or not
      significant on their own (Holm-adjusted p >= alpha), are named as disagreeing.
    - Combined p >= alpha, but some method significant on its own at alpha (before the
      multiplicity correction) or flagging the model by its own paper rule (e.g. Neural
      Cleanse's anomaly index > 2), or some method failed: ``inconclusive`` (the evidence is
      split or incomplete); otherwise ``clean``.

    Args:
        evidence: one entry per method that ran.
        alpha: significance level of the combined test.
        rule: ``"cauchy"`` or ``"holm"``.
        failed: names of selected methods that could not run (makes "clean" inconclusive).
    """
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    if rule not in RULES:
        raise InputError(f"unknown combination rule {rule!r}; use one of {', '.join(RULES)}")
    voting = [e for e in evidence if e.p_value is not None]
    silent = [e.method for e in evidence if e.p_value is None]
    if not voting:
        why = "no method produced a p-value"
        if failed:
            why += f" ({', '.join(failed)} failed)"
        return CombinedVerdict("inconclusive", None, rule, alpha, reason=why + ": the scan cannot judge",
                               hint="run a method with a calibrated p-value (neural_cleanse, lred)",
                               disagreeing=[{"method": m, "why": "no p-value"} for m in silent])
    ps = [float(e.p_value) for e in voting]  # type: ignore[arg-type]
    p = combine_pvalues(ps, rule)
    adj = holm_adjusted(ps)
    names = ", ".join(e.method for e in voting)
    if p < alpha:
        score: dict[int, float] = {}
        for e, pi in zip(voting, ps, strict=True):
            if e.target is None:
                continue
            contrib = (1 / (max(pi, 1e-300) * math.pi) if pi < _SMALL else math.tan((0.5 - pi) * math.pi)) \
                if rule == "cauchy" else -math.log(max(pi, 1e-300))
            score[int(e.target)] = score.get(int(e.target), 0.0) + contrib
        target = max(score, key=lambda t: (score[t], -t)) if score else None
        supporting, disagreeing, sources = [], [], set()
        for e, pa in zip(voting, adj, strict=True):
            if e.target is not None and e.target == target:
                supporting.append(e.method)
                sources |= set(e.sources)
            elif pa < alpha and e.target is not None:
                disagreeing.append({"method": e.method, "why": f"points at class {e.target} "
                                    f"(p = {_fmt(float(e.p_value))})"})  # type: ignore[arg-type]
            else:
                disagreeing.append({"method": e.method, "why": f"not significant on its own "
                                    f"(p = {_fmt(float(e.p_value))}, Holm-adjusted {_fmt(pa)})"})  # type: ignore[arg-type]
        disagreeing += [{"method": m, "why": "no p-value"} for m in silent]
        reason = (f"combined p = {_fmt(p)} < {alpha:g} ({rule} rule over {names})"
                  + (f"; target class {target}" if target is not None else "; no method names a target")
                  + (f", named by {', '.join(supporting)}" if supporting else ""))
        return CombinedVerdict("backdoored", p, rule, alpha, target=target, sources=sorted(sources),
                               supporting=supporting, disagreeing=disagreeing, reason=reason)
    alone = [e for e, pi in zip(voting, ps, strict=True) if pi < alpha or e.flagged]
    disagreeing = [{"method": e.method, "why": (f"significant on its own (p = {_fmt(float(e.p_value or 0.0))})"
                                                if float(e.p_value or 0.0) < alpha else
                                                f"flags the model by its own rule (p = {_fmt(float(e.p_value or 0.0))})")
                    + (f", points at class {e.target}" if e.target is not None else "")}
                   for e in alone]
    disagreeing += [{"method": m, "why": "no p-value"} for m in silent]
    if alone or failed:
        bits = []
        if alone:
            bits.append(f"{', '.join(e.method for e in alone)} "
                        f"{'flags' if len(alone) == 1 else 'flag'} the model but the combined "
                        f"p = {_fmt(p)} >= {alpha:g}")
        if failed:
            bits.append(f"{', '.join(failed)} could not run")
        return CombinedVerdict("inconclusive", p, rule, alpha, disagreeing=disagreeing,
                               supporting=[e.method for e in voting if e not in alone],
                               reason="the evidence is split: " + "; ".join(bits),
                               hint="scan with more clean images (--n-per-class) or longer method "
                                    "budgets (--set METHOD.KEY=VALUE), or name methods with --method")
    return CombinedVerdict("clean", p, rule, alpha, supporting=[e.method for e in voting],
                           disagreeing=disagreeing,
                           reason=f"combined p = {_fmt(p)} >= {alpha:g} ({rule} rule over {names}): "
                                  "no method finds a backdoor")


__all__ = ["RULES", "CombinedVerdict", "Evidence", "cauchy_combination", "combine_evidence",
           "combine_pvalues", "holm_adjusted"]
