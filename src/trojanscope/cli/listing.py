"""``trojanscope list [kind]``: what is registered (methods, architectures, datasets, triggers),
with every parameter, its default and the values it may take (from the entry's
``parameter_constraints``, the same table that ``validate_params`` checks)."""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

import typer

from ..errors import InputError

#: ``list`` kinds -> registry kinds
KINDS: dict[str, tuple[str, ...]] = {
    "methods": ("model_detector", "input_detector", "mitigation"),
    "model_detectors": ("model_detector",),
    "input_detectors": ("input_detector",),
    "mitigations": ("mitigation",),
    "architectures": ("arch",),
    "datasets": ("dataset",),
    "triggers": ("trigger",),
    "evasion": ("evasion",),
}


def _params(obj: Any) -> list[dict[str, Any]]:
    from .._params import describe_briefly

    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    table = obj.all_parameter_constraints() if hasattr(obj, "all_parameter_constraints") else {}
    out = []
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name == "self":
            continue
        default = None if p.default is p.empty else p.default
        out.append({"name": name, "default": default if isinstance(default, (int, float, str, bool, type(None),
                                                                            list, tuple)) else repr(default),
                    "required": p.default is p.empty,
                    "allowed": describe_briefly(table[name]) if table.get(name) else None})
    return out


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def describe(kind: str) -> list[dict[str, Any]]:
    """Every entry of a ``list`` kind: name, registry kind, one-line summary, parameters; model
    detectors also say what the automatic selection needs."""
    from .._registry import available, get

    rows = []
    for reg in KINDS[kind]:
        for name in available(reg):
            obj = get(reg, name)
            row: dict[str, Any] = {"name": name, "kind": reg, "summary": _summary(obj), "parameters": _params(obj)}
            if reg == "model_detector":
                row["auto"] = not getattr(obj, "experimental", None)
                row["needs"] = ([] if not getattr(obj, "needs_gradients", True) else ["gradients"]) + \
                    (["clean images"] if getattr(obj, "needs_data", True) else []) + list(getattr(obj, "needs", ()))
                if getattr(obj, "experimental", None):
                    row["experimental"] = obj.experimental
            rows.append(row)
    return rows


def list_cmd(
    kind: Annotated[str | None, typer.Argument(help="methods, model_detectors, input_detectors, "
                                               "mitigations, architectures, datasets, triggers, "
                                               "evasion (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """List what trojanscope has, with every parameter, its default and its allowed values (the
    keys of --set)."""
    from rich.markup import escape

    from ._common import out

    kinds = list(KINDS) if kind is None else [kind]
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind is None:
        kinds = ["model_detectors", "input_detectors", "mitigations", "architectures", "datasets",
                 "triggers", "evasion"]
    data = {k: describe(k) for k in kinds}
    if as_json:
        out.print_json(json.dumps(data, default=repr))
        return
    for k, rows in data.items():
        out.print(f"[bold]{k}[/]")
        for r in rows:
            extra = ""
            if r["kind"] == "model_detector":
                extra = " [dim](auto)[/]" if r["auto"] else " [yellow](experimental: only when named)[/]"
                if r["needs"]:
                    extra += f" [dim]needs: {', '.join(r['needs'])}[/]"
            out.print(f"  [cyan]{r['name']}[/]{extra}  {escape(r['summary'])}", highlight=False)
            for p in r["parameters"]:
                d = "(required)" if p["required"] else f"= {p['default']!r}"
                allowed = f"  ({p['allowed']})" if p["allowed"] else ""
                out.print(f"      {p['name']} {d}{allowed}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("list")(list_cmd)
