"""JSON reports. Every report records parameters and library versions.

Scan reports (``trojanscope scan --json FILE``) follow the JSON Schema shipped in the package
(:mod:`.schema`, ``schemas/scan-report.schema.json``, version :data:`SCHEMA_VERSION`)::

    {"kind": "scan", "schema_version": "2.0", "created": ISO-8601 time,
     "model": {"path": PATH, ...}, "data": {"dataset", "split", "n_clean", ...},
     "verdict": {"verdict": "clean"|"backdoored"|"inconclusive", "reason": TEXT,
                 "target": INT|null, "sources": [INT], ...},
     "results": [ScanResult.to_dict(), ...],      # one per method
     "trigger_effect": {...}|null,                # the reversed trigger stamped on clean images
     "parameters": {...}, "versions": {...}, ...extra keys}

Non-finite floats are written as null; trigger tensors as their shapes (``--save-triggers``
writes the tensors). The demo, ``inputs`` and ``mitigate`` reports keep their own layouts
(``"schema": SCHEMA``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..types import ScanResult
from ..utils import atomic_write_json, to_jsonable, versions
from .explain import fallback_verdict
from .schema import SCHEMA_VERSION

SCHEMA = 1  # layout version of the demo / inputs / mitigate reports


def combined_verdict(results: list[ScanResult], rule: str = "any") -> dict[str, Any]:
    """Combine the verdicts of several methods by vote (legacy; the workflow's calibrated
    verdict supersedes it).

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


def scan_report(model: str | Path | Mapping[str, Any], results: Sequence[ScanResult], *,
                verdict: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                trigger_effect: Any = None, parameters: Mapping[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """The scan report as a JSON-ready dict (layout in the module docstring).

    Args:
        model: the model's path, or a mapping with at least ``"path"``.
        results: one ScanResult per method.
        verdict: the combined verdict (``verdict``, ``reason``, ``target``, ...); default:
            :func:`~.explain.fallback_verdict` of ``results``.
        data: what the model was scanned with (dataset, split, n_clean, ...).
        trigger_effect: a :class:`~.prep.TriggerExamples` (or its ``to_dict()``), or None.
        parameters: the run's parameters (seed, device, ...).
        extra: more top-level keys.
    """
    m = dict(model) if isinstance(model, Mapping) else {"path": str(model)}
    te = trigger_effect.to_dict() if hasattr(trigger_effect, "to_dict") else trigger_effect
    return to_jsonable({
        "kind": "scan",
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": m,
        "data": dict(data or {}),
        "verdict": dict(verdict) if verdict is not None else fallback_verdict(results),
        "results": [r.to_dict() for r in results],
        "trigger_effect": te,
        "parameters": dict(parameters or {}),
        "versions": versions(),
        **extra,
    })


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write atomically (never a half-written report)."""
    atomic_write_json(path, report)
    return Path(path)
