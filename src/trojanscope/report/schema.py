"""The JSON Schema of ``report.json`` (scan reports), shipped in the package.

``schema_version`` is "MAJOR.MINOR": a minor version only adds keys (readers must ignore keys
they do not know), a major version changes or removes one. The schema file is
``trojanscope/report/schemas/scan-report.schema.json`` (JSON Schema 2020-12); any validator can
use it. :func:`validate` uses the ``jsonschema`` package (a development dependency: the library
writes reports without it; the tests validate every report they write).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_VERSION = "2.0"
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
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        raise ValueError(f"report does not match {SCHEMA_FILE} at {where}: {e.message}"
                         + (f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""))
