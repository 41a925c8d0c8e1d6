"""JSON reports (schema 1). Every report records parameters and library versions.

Scan report layout (``trojanscope scan --json FILE``)::

    {"schema": 1, "model": PATH, "created": ISO-8601 time,
     "combined": {"backdoored": BOOL, "votes": INT, "methods": INT, "target": INT|null,
                  "target_votes": {CLASS: INT}, "rule": "any"},
     "results": [{"method": NAME, "backdoored": BOOL, "target": INT|null, "sources": [INT],
                  "statistic": FLOAT, "p_value": FLOAT|null, "anomaly_index": FLOAT|null,
                  "threshold": FLOAT|null, "per_class": {...}, "trigger": {NAME: SHAPE},
                  "extra": {...}, "seconds": FLOAT, "params": {...}}, ...],
     "versions": {...}, ...extra keys (dataset, n_clean, device, seed)}

Non-finite floats are written as null; trigger tensors as their shapes (the HTML report shows them).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from ..types import ScanResult
from ..utils import atomic_write_json, to_jsonable, versions

SCHEMA = 1


def combined_verdict(results: list[ScanResult], rule: str = "any") -> dict[str, Any]:
    """Combine the verdicts of several methods.

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


def scan_report(model: str, results: list[ScanResult], **extra: Any) -> dict[str, Any]:
    """``{"schema": 1, "model": PATH, "combined": ..., "results": [ScanResult.to_dict(), ...],
    "versions": ...}`` (layout in the module docstring)."""
    return to_jsonable({
        "schema": SCHEMA,
        "model": str(model),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "combined": combined_verdict(results),
        "results": [r.to_dict() for r in results],
        "versions": versions(),
        **extra,
    })


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write atomically (never a half-written report)."""
    atomic_write_json(path, report)
    return Path(path)
