"""A single self-contained HTML report: figures inlined as base64 PNG, no external assets.

Generic over methods: the verdict table, each method's per-class statistic with its threshold,
its reversed triggers as image grids, and its own figures (:mod:`.figures`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

from ..types import ScanResult
from ..utils import atomic_write_bytes, to_jsonable, versions
from .figures import Figure, all_figures
from .json_report import combined_verdict

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;font-size:.92em}th{background:#f3f3f3}
.bd{color:#fff;background:#c62828;font-weight:bold}.ok{color:#fff;background:#2e7d32;font-weight:bold}
figure{margin:1em 0}figcaption{font-size:.88em;color:#555}img{max-width:100%}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em;max-height:30em}
.muted{color:#777;font-size:.85em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    return _e(v)


def _img(fig: Figure) -> str:
    cap, png = fig
    b64 = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{_e(cap)}" src="data:image/png;base64,{b64}"><figcaption>{_e(cap)}</figcaption></figure>'


def _verdict_cell(bd: bool) -> str:
    return '<td class="bd">BACKDOORED</td>' if bd else '<td class="ok">clean</td>'


def verdict_table(results: list[ScanResult]) -> str:
    """The verdict of every method as an HTML table."""
    rows = ["<tr><th>method</th><th>verdict</th><th>target</th><th>sources</th><th>statistic</th>"
            "<th>threshold</th><th>p-value</th><th>seconds</th></tr>"]
    for r in results:
        note = r.extra.get("experimental") if isinstance(r.extra, dict) else None
        name = _e(r.method) + (f' <span title="{_e(note)}">(experimental)</span>' if note else "")
        rows.append(f"<tr><td>{name}</td>{_verdict_cell(r.backdoored)}<td>{_num(r.target)}</td>"
                    f"<td>{_e(', '.join(map(str, r.sources)) or '–')}</td><td>{_num(r.statistic)}</td>"
                    f"<td>{_num(r.threshold)}</td><td>{_num(r.p_value)}</td><td>{r.seconds:.1f}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _value_html(v: Any, depth: int = 0) -> str:
    """Scalars inline; dicts as key/value tables; lists of flat dicts as tables; the rest as JSON."""
    if _scalar(v):
        return _num(v)
    if isinstance(v, (list, dict)) and not v:
        return "–"
    if isinstance(v, dict) and depth < 3 and all(_scalar(x) or isinstance(x, (dict, list)) for x in v.values()):
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(x, depth + 1)}</td></tr>" for k, x in v.items())
        return f"<table>{rows}</table>"
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and depth < 3:
        cols = list(dict.fromkeys(k for x in v for k, y in x.items() if _scalar(y)))
        if cols:
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{_num(x.get(c))}</td>" for c in cols) + "</tr>" for x in v)
            return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(v, list) and len(v) <= 20 and all(_scalar(x) for x in v):
        return _e(", ".join(_num(x) for x in v))
    text = json.dumps(to_jsonable(v), indent=1)
    return f"<details><summary class='muted'>{len(text)} characters of JSON</summary><pre>{_e(text)}</pre></details>"


def _extra_section(name: str, value: Any) -> str:
    out = [f"<h2>{_e(name)}</h2>"]
    if isinstance(value, list) and value and all(isinstance(f, tuple) and len(f) == 2
                                                 and isinstance(f[1], bytes) for f in value):
        out += [_img(f) for f in value]  # a list of (caption, png) figures
    elif isinstance(value, str):
        out.append(f"<pre>{_e(value)}</pre>")
    else:
        out.append(_value_html(value))
    return "".join(out)


def _method_section(r: ScanResult) -> str:
    out = [f"<h2>{_e(r.method)}</h2>",
           f"<p>verdict: <b>{'BACKDOORED' if r.backdoored else 'clean'}</b>"
           + (f", target class <b>{r.target}</b>" if r.target is not None else "")
           + (f", sources {_e(r.sources)}" if r.sources else "")
           + f"; statistic {_num(r.statistic)}"
           + (f" (threshold {_num(r.threshold)})" if r.threshold is not None else "")
           + (f"; p-value {_num(r.p_value)}" if r.p_value is not None else "")
           + f"; {r.seconds:.1f} s</p>"]
    try:
        out += [_img(f) for f in all_figures(r)]
    except Exception as e:  # a broken figure must not lose the rest of the report
        out.append(f"<p class='muted'>figures failed: {_e(repr(e))}</p>")
    out.append("<details><summary>per-class values</summary>" + _value_html(r.per_class, 1) + "</details>")
    out.append("<details><summary>parameters</summary>" + _value_html(to_jsonable(r.params), 1) + "</details>")
    if r.extra:
        out.append("<details><summary>details</summary>" + _value_html(to_jsonable(r.extra), 1) + "</details>")
    return "".join(out)


def render_html(title: str, results: list[ScanResult], extra_sections: dict[str, Any] | None = None) -> str:
    """The report as an HTML string (see :func:`write_html`)."""
    comb = combined_verdict(results) if results else None
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p class='muted'>trojanscope report, {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}</p>"]
    if comb is not None:
        parts.append(f"<p>combined verdict ({comb['votes']} of {comb['methods']} methods flag the model): "
                     f"<b>{'BACKDOORED' if comb['backdoored'] else 'clean'}</b>"
                     + (f", target class <b>{comb['target']}</b>" if comb["target"] is not None else "") + "</p>")
        parts.append("<h2>verdicts</h2>" + verdict_table(results))
    else:
        parts.append("<p>no model scans in this report</p>")
    parts += [_method_section(r) for r in results]
    for name, value in (extra_sections or {}).items():
        parts.append(_extra_section(name, value))
    parts.append("<h2>versions</h2>" + _value_html(versions()))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, title: str, results: list[ScanResult],
               extra_sections: dict[str, Any] | None = None) -> Path:
    """Write a self-contained HTML report (atomically).

    Args:
        path: output file.
        title: page title.
        results: the scans to show (verdict table, per-class charts, reversed triggers,
            method-specific figures).
        extra_sections: name -> content: a list of (caption, PNG bytes) figures, a string
            (shown preformatted), or JSON-like data (shown as tables / collapsible JSON).
    """
    atomic_write_bytes(path, render_html(title, results, extra_sections).encode("utf-8"))
    return Path(path)
