"""The JSON Schemas of the reports (scan, inputs, repair), shipped in the package.

The report's ``schema`` key is the layout version (:data:`SCHEMA_VERSION`, the same as
``trojanscope.workflows.REPORT_SCHEMA``): it changes only when a key changes meaning or is
removed; keys may be added within a version (readers must ignore keys they do not know). The
schema files (JSON Schema 2020-12; any validator can use them) are under
``trojanscope/report/schemas/``, one per report ``kind`` (:data:`SCHEMA_FILES`):
``scan-report.schema.json`` (``trojanscope scan --json``), ``inputs-report.schema.json``
(``trojanscope inputs --json``) and ``repair-report.schema.json`` (``trojanscope mitigate --json``). :func:`validate` uses the ``jsonschema`` package (a development dependency: the library
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
#: The schema file of each report ``kind`` (the reports share the envelope, workflows.Envelope).
SCHEMA_FILES = {"scan": SCHEMA_FILE, "inputs": "inputs-report.schema.json",
                "mitigate": "repair-report.schema.json"}


@cache
def _schema_text(name: str = SCHEMA_FILE) -> str:
    return resources.files(__package__).joinpath("schemas", name).read_text(encoding="utf-8")


def report_schema(kind: str = "scan") -> dict[str, Any]:
    """The JSON Schema of the reports of ``kind`` (``"scan"``, ``"inputs"``, ``"mitigate"``), a fresh dict."""
    if kind not in SCHEMA_FILES:
        raise ValueError(f"no report schema for kind {kind!r}; kinds: {', '.join(SCHEMA_FILES)}")
    return json.loads(_schema_text(SCHEMA_FILES[kind]))


def scan_report_schema() -> dict[str, Any]:
    """The scan report's JSON Schema (a fresh dict)."""
    return report_schema("scan")


def validate(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first offending path when ``report`` breaks its schema.

    The schema is the one of the report's ``kind`` (a report of no known kind is checked against
    the scan report's schema, which then names ``kind``).

    Needs the ``jsonschema`` package (``pip install trojanscope[dev]``).
    """
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - dev dependency
        raise ImportError("validating reports needs the jsonschema package: pip install jsonschema") from e
    kind = report.get("kind") if isinstance(report, dict) else None
    name = SCHEMA_FILES.get(kind, SCHEMA_FILE) if isinstance(kind, str) else SCHEMA_FILE
    validator = jsonschema.Draft202012Validator(json.loads(_schema_text(name)))
    errors = list(validator.iter_errors(report))
    if errors:
        e = jsonschema.exceptions.best_match(errors)
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        msg = e.message if len(e.message) <= 300 else e.message[:300] + " ..."
        raise ValueError(f"report does not match {name} at {where}: {msg}"
                         + (f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""))
