"""The JSON Schema of ``report.json`` (scan reports), shipped in the package.

The report's ``schema`` key is the layout version (:data:`SCHEMA_VERSION`, the same as
``trojanscope.workflows.REPORT_SCHEMA``): it changes only when a key changes meaning or is
removed; keys may be added within a version (readers must ignore keys they do not know). The
schema file is
``trojanscope/report/schemas/scan-report.schema.json`` (JSON Schema 2020-12); any validator can
use it. :func:`validate` uses the ``jsonschema`` package (a development dependency: the library
writes reports without it; the tests validate every report they write).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from ..workflows import REPORT_SCHEMA

SCHEMA_VERSION: int = REPORT_SCHEMA
SCHEMA_FILE = "scan-report.schema.json"


@cache
def _schema_text() -> str:
    return resources.files(__package__).joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8")


def scan_report_schema() -> dict[str, Any]:
    """The scan report's JSON Schema (a fresh dict)."""
    return json.loads(_schema_text())


def validate(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first offending path when ``report`` breaks the schema.

    Needs the ``jsonschema`` package (``pip install trojanscope[dev]``).
    """
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - dev dependency
        raise ImportError("validating reports needs the jsonschema package: pip install jsonschema") from e
    validator = jsonschema.Draft202012Validator(scan_report_schema())
    errors = list(validator.iter_errors(report))
    if errors:
        e = jsonschema.exceptions.best_match(errors)
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        msg = e.message if len(e.message) <= 300 else e.message[:300] + " ..."
        raise ValueError(f"report does not match {SCHEMA_FILE} at {where}: {msg}"
                         + (f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""))
