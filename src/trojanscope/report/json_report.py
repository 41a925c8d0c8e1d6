"""JSON reports (schema 1). Every report records parameters and library versions."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from ..types import ScanResult
from ..utils import atomic_write_json, to_jsonable, versions

SCHEMA = 1


def scan_report(model: str, results: list[ScanResult], **extra: Any) -> dict[str, Any]:
    """``{"schema": 1, "model": PATH, "results": [ScanResult.to_dict(), ...], "versions": ...}``."""
    return to_jsonable({
        "schema": SCHEMA,
        "model": str(model),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "results": [r.to_dict() for r in results],
        "versions": versions(),
        **extra,
    })


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write atomically (never a half-written report)."""
    atomic_write_json(path, report)
    return Path(path)
