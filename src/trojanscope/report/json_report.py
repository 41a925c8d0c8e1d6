"""JSON reports. Every report records parameters and library versions.

A scan's ``report.json`` is :meth:`trojanscope.workflows.ScanReport.to_dict` plus
``trigger_effect`` (the reversed trigger stamped on clean images, :mod:`.prep`), and follows the
JSON Schema shipped in the package (:mod:`.schema`)::

    {"schema": 2, "kind": "scan", "created": ISO-8601 time,
     "model": {"path", "name", "arch", "num_classes", "in_shape", ...},
     "data": {"name", "n_images", ...}, "parameters": {...}, "versions": {...}, "timings": {...},
     "verdict": {"verdict": "clean"|"backdoored"|"inconclusive", "reason", "hint", "target",
                 "sources", "p_value", "rule", "alpha", "supporting", "disagreeing", "exit_code"},
     "sanity": {...}|null,
     "methods": [{"method", "status": "ok"|"failed"|"skipped", "p_value", "calibration",
                  "candidate_target", "why", "error", "result": ScanResult.to_dict()|null}],
     "trigger_effect": {...}|null}

Non-finite floats are written as null; trigger tensors as their shapes (``--save-triggers``
writes the tensors). ``inputs`` and ``mitigate`` write the same envelope with their own
``kind`` (:class:`~trojanscope.workflows.GuardReport`, :class:`~trojanscope.workflows.RepairReport`;
a schema file each, :mod:`.schema`); the demo's report keeps its own layout
(``"schema": SCHEMA``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..combine import Evidence, combine_evidence
from ..types import ScanResult
from ..utils import atomic_write_json, to_jsonable, versions
from ..workflows import MethodRun, ScanReport, candidate_target
from .explain import why

SCHEMA = 1  # layout version of the demo's report


def combined_verdict(results: list[ScanResult], rule: str = "any") -> dict[str, Any]:
    """Combine the verdicts of several methods by vote (legacy; the calibrated verdict of
    :func:`trojanscope.combine.combine_evidence` supersedes it).

    Args:
        results: one ScanResult per method.
        rule: ``"any"`` (backdoored when at least one method says so) or ``"majority"``.

    Returns:
        ``{"backdoored", "votes", "methods", "target", "target_votes", "rule"}``; ``target`` is
        the class named by most flagging methods (ties: the smallest class), or None.
    """
    if rule not in ("any", "majority"):
        raise ValueError(f"rule must be 'any' or 'majority', got {rule!r}")
    flagged = [r for r in results if r.backdoored]
    tv: dict[int, int] = {}
    for r in flagged:
        if r.target is not None:
            tv[int(r.target)] = tv.get(int(r.target), 0) + 1
    need = 1 if rule == "any" else len(results) // 2 + 1
    bd = bool(results) and len(flagged) >= need
    target = min(tv, key=lambda t: (-tv[t], t)) if bd and tv else None
    return {"backdoored": bd, "votes": len(flagged), "methods": len(results), "target": target,
            "target_votes": {str(t): n for t, n in sorted(tv.items())}, "rule": rule}


def report_from_results(results: Sequence[ScanResult], *, model: Mapping[str, Any],
                        data: Mapping[str, Any] | None = None, parameters: Mapping[str, Any] | None = None,
                        alpha: float = 0.05, rule: str = "cauchy") -> ScanReport:
    """A :class:`~trojanscope.workflows.ScanReport` for results computed elsewhere (detectors
    run one by one, saved results): the combined verdict of
    :func:`~trojanscope.combine.combine_evidence`, no sanity gate. ``scan_model`` builds its
    report itself; this is for callers that ran the detectors without it."""
    runs = [MethodRun(r.method, "ok", result=r, p_value=r.p_value,
                      calibration=None if r.p_value is None else "the method's own test",
                      candidate_target=candidate_target(r), why=why(r)) for r in results]
    evidence = [Evidence(m.method, m.p_value, m.candidate_target, list(r.sources), bool(r.backdoored))
                for m, r in zip(runs, results, strict=True)]
    verdict = combine_evidence(evidence, alpha=alpha, rule=rule)
    return ScanReport(verdict, None, runs, model={"path": None, **dict(model)}, data=dict(data or {}),
                      parameters={"alpha": alpha, "rule": rule, **dict(parameters or {})},
                      timings={"methods": {r.method: r.seconds for r in results},
                               "total": float(sum(r.seconds for r in results))},
                      versions=versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))


def scan_report(report: ScanReport, trigger_effect: Any = None) -> dict[str, Any]:
    """The JSON report of a scan: ``report.to_dict()`` plus ``trigger_effect`` (a
    :class:`~.prep.TriggerExamples`, its ``to_dict()``, or None)."""
    te = trigger_effect.to_dict() if hasattr(trigger_effect, "to_dict") else trigger_effect
    return to_jsonable({**report.to_dict(), "trigger_effect": te})


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write atomically (never a half-written report)."""
    atomic_write_json(path, report)
    return Path(path)
