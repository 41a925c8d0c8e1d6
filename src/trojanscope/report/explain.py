"""Plain-language sentences for reports: one "why" per method, and a fallback combined verdict.

Generic over methods: the sentences are built from the result's display metadata
(``statistic_key``, ``threshold_on``) and its numbers, never from method names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..types import ScanResult
from .figures import candidate

VERDICTS = ("clean", "backdoored", "inconclusive")


def fmt(v: Any, digits: int = 3) -> str:
    """A number for people: 3 significant digits, "–" for None / non-finite."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        f = float(v)
        if not math.isfinite(f):
            return "–"
        if isinstance(v, int):
            return str(v)
        return f"{f:.{digits}g}"
    return str(v)


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 0.0001"


def why(result: ScanResult) -> str:
    """One sentence: what the method measured and why it concludes what it concludes."""
    key = result.statistic_key.replace("_", " ")
    stat, thr, p = result.statistic, result.threshold, result.p_value
    cand = candidate(result)
    who = f"class {cand}" if cand is not None else "the most suspicious class"
    src = (f"; sources: {', '.join(map(str, result.sources))}" if result.backdoored and result.sources else "")
    if result.threshold_on == "p_value" and p is not None and thr is not None:
        if result.backdoored:
            return (f"class {result.target} stands out: its {key} = {fmt(stat)} is improbable under the "
                    f"null fitted to the other classes ({_p(p)}, below {thr:g}){src}.")
        return (f"no class stands out: the largest {key} ({fmt(stat)}, {who}) is plausible under the "
                f"null fitted to the other classes ({_p(p)}, not below {thr:g}).")
    ptxt = f", {_p(p)}" if p is not None else ""
    rule = (result.extra or {}).get("verdict_rule")
    if thr is not None and rule and (stat > thr) != result.backdoored:  # a rule with a second margin
        head = f"class {result.target} stands out" if result.backdoored else "no class stands out"
        return f"{head}: the verdict needs {rule}{ptxt}{src}."
    if thr is not None:
        if result.backdoored:
            return (f"class {result.target} stands out: its {key} is {fmt(stat)}, above the threshold "
                    f"{thr:g}{ptxt}{src}.")
        return f"no class stands out: the highest {key} is {fmt(stat)} ({who}), not above the threshold {thr:g}{ptxt}."
    if result.backdoored:
        return f"flags class {result.target}: {key} = {fmt(stat)}{ptxt}{src}."
    return f"finds no backdoor: {key} = {fmt(stat)}{ptxt}."


def fallback_verdict(results: Sequence[ScanResult]) -> dict[str, Any]:
    """A combined verdict when the caller gives none: backdoored when any method flags the model
    (target: the class most flagging methods name), clean when none does, inconclusive with no
    results. The workflow's calibrated verdict supersedes this one."""
    if not results:
        return {"verdict": "inconclusive", "reason": "no detector ran", "target": None, "sources": []}
    flagged = [r for r in results if r.backdoored]
    if not flagged:
        return {"verdict": "clean", "target": None, "sources": [],
                "reason": f"none of the {len(results)} methods finds a class that stands out"}
    votes: dict[int, int] = {}
    for r in flagged:
        if r.target is not None:
            votes[int(r.target)] = votes.get(int(r.target), 0) + 1
    target = min(votes, key=lambda t: (-votes[t], t)) if votes else None
    names = ", ".join(r.method for r in flagged)
    return {"verdict": "backdoored", "target": target,
            "sources": sorted({s for r in flagged if r.target == target for s in r.sources}),
            "reason": f"{len(flagged)} of {len(results)} methods flag the model ({names})"}
