"""A single self-contained HTML report a person reads in ten seconds.

Top to bottom: the verdict banner (clean / backdoored / inconclusive, with the reason); one plain
"why" sentence per method; the target's reversed trigger, enlarged, and stamped on a few clean
images with the model's prediction before and after (:class:`~.prep.TriggerExamples`, computed
by :func:`~.prep.trigger_examples` — this module never runs a model); a table of the methods;
then one section per method (per-class chart coloured by the method's verdict, with the
threshold legend naming its statistic; reversed-trigger grids; registered method figures;
per-class values, parameters and details as tables). Everything is inline (base64 PNG, inline
CSS, no script), no network; the layout holds at 700 px wide.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..types import ScanResult
from ..utils import atomic_write_bytes, to_jsonable, versions
from ..workflows import ScanReport
from .explain import fallback_verdict, fmt, why
from .figures import Figure, candidate, image_png, per_class_key
from .prep import TriggerExamples
from .registry import all_figures

_CSS = """
*{box-sizing:border-box}
body{overflow-wrap:break-word;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:980px;
padding:10px 16px 40px;color:#1d1d1f}
h1{font-size:1.15em;margin:.4em 0;color:#444;font-weight:600;overflow-wrap:anywhere}
h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.15em;margin:1.4em 0 .5em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
.banner{border-radius:8px;padding:12px 18px;color:#fff;margin:6px 0}
.banner .v{font-size:2em;font-weight:800;letter-spacing:.03em;line-height:1.1}
.banner .t{font-size:1.15em;font-weight:600}
.banner p{margin:.35em 0 0}
.backdoored{background:#c62828}.clean{background:#2e7d32}.inconclusive{background:#e69500;color:#1d1d1f}
.error{background:#555}.muted.pill{background:#999;color:#fff}
.meta{color:#555;font-size:.85em;overflow-wrap:break-word}
ul.why{list-style:none;padding:0;margin:.4em 0}ul.why li{margin:.35em 0}
.pill{display:inline-block;border-radius:4px;padding:0 .45em;font-size:.78em;font-weight:700;color:#fff;
vertical-align:1px}
.trig{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:.6em 0}figcaption{font-size:.85em;color:#555;overflow-wrap:anywhere}
.trig figure{margin:0;text-align:center;max-width:150px}
img{max-width:100%;height:auto}img.px{image-rendering:pixelated}
.ex{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;margin:.6em 0}
.ex figure{margin:0;text-align:center;border:1px solid #ddd;border-radius:6px;padding:6px}
.pair{display:flex;justify-content:center;gap:6px}.pair img{width:64px;height:64px}
.hit{color:#c62828;font-weight:700}
table{border-collapse:collapse;margin:.5em 0;max-width:100%}
td,th{border:1px solid #ddd;padding:.2em .5em;font-size:.88em;text-align:left;overflow-wrap:anywhere;
vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.mark td{background:#fff3e0}
details{margin:.4em 0}summary{cursor:pointer;color:#333}
.muted{color:#666;font-size:.85em}
"""

_LABEL = {"backdoored": "BACKDOORED", "clean": "CLEAN", "inconclusive": "INCONCLUSIVE"}


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any) -> str:
    return _e(fmt(v, 4))


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(fig: Figure) -> str:
    cap, png = fig
    return (f'<figure><img alt="{_e(cap)}" src="{_b64(png)}"><figcaption>{_e(cap)}</figcaption></figure>')


def _pill(verdict: str, text: str | None = None) -> str:
    return f'<span class="pill {_e(verdict)}">{_e(text or verdict)}</span>'


def _method_verdict(r: ScanResult) -> str:
    return "backdoored" if r.backdoored else "clean"


# ------------------------------------------------------------------------------ generic values


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _value_html(v: Any, depth: int = 0) -> str:
    """Data as tables: scalars inline, dicts as key/value tables, lists of records and small
    matrices as tables, long vectors summarised. Never raw JSON."""
    if _scalar(v):
        return _num(v) if not isinstance(v, str) else _e(v)
    if isinstance(v, (list, dict)) and not v:
        return "–"
    if isinstance(v, dict):
        if depth >= 4:
            return f"<span class='muted'>{len(v)} entries (see report.json)</span>"
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(x, depth + 1)}</td></tr>" for k, x in v.items())
        return f"<table>{rows}</table>"
    if isinstance(v, list):
        if all(_scalar(x) for x in v):
            if len(v) <= 12:
                return _e(", ".join(fmt(x, 4) if not isinstance(x, str) else x for x in v))
            nums = [float(x) for x in v if _is_num(x) and x is not None and math.isfinite(float(x))]
            rng = f", from {fmt(min(nums))} to {fmt(max(nums))}" if nums else ""
            return f"<span class='muted'>{len(v)} values{rng} (see report.json)</span>"
        if all(isinstance(x, dict) for x in v) and depth < 4:
            cols = list(dict.fromkeys(k for x in v for k, y in x.items() if _scalar(y)))[:8]
            if cols:
                head = "".join(f"<th>{_e(c)}</th>" for c in cols)
                body = "".join("<tr>" + "".join(f"<td>{_value_html(x.get(c), depth + 1)}</td>" for c in cols)
                               + "</tr>" for x in v[:50])
                more = f"<p class='muted'>{len(v) - 50} more rows in report.json</p>" if len(v) > 50 else ""
                return f"<table><tr>{head}</tr>{body}</table>{more}"
        if (all(isinstance(x, list) and all(_is_num(y) for y in x) for x in v)
                and max(len(x) for x in v) <= 12 and len(v) <= 40):
            body = "".join("<tr>" + "".join(f"<td class='n'>{_num(y)}</td>" for y in x) + "</tr>" for x in v)
            return f"<table>{body}</table>"
    return "<span class='muted'>nested data (see report.json)</span>"


def _kv_table(d: Mapping[str, Any]) -> str:
    return _value_html(to_jsonable(dict(d)), 1)


# ------------------------------------------------------------------------------ sections


def _banner(verdict: Mapping[str, Any], examples: TriggerExamples | None) -> str:
    v = str(verdict.get("verdict", "inconclusive"))
    label = _LABEL.get(v, v.upper())
    t = verdict.get("target")
    sub = ""
    if v == "backdoored":
        sub = f"target class {t}" if t is not None else "target class unknown"
        src = verdict.get("sources") or []
        if src:
            sub += f" · sources {', '.join(map(str, src))}"
    parts = [f'<div class="v">{_e(label)}</div>']
    if sub:
        parts.append(f'<div class="t">{_e(sub)}</div>')
    reason = verdict.get("reason")
    if reason:
        parts.append(f"<p>{_e(reason)}</p>")
    if verdict.get("hint"):
        parts.append(f"<p><b>hint:</b> {_e(verdict['hint'])}</p>")
    dis = [d for d in verdict.get("disagreeing") or [] if isinstance(d, Mapping) and d.get("method")]
    if dis:
        parts.append("<p>disagreeing: " + "; ".join(
            f"<b>{_e(d['method'])}</b>" + (f" ({_e(d['why'])})" if d.get("why") else "") for d in dis) + "</p>")
    if examples is not None and examples.flagged and v == "backdoored" and examples.target == t:
        parts.append(f"<p>The reversed trigger sends {examples.flip_rate:.0%} of {examples.n_evaluated} "
                     f"clean images of other classes to class {examples.target} "
                     f"(without it: {examples.clean_rate:.0%}).</p>")
    return f'<header class="banner {_e(v)}" id="verdict" data-verdict="{_e(v)}">' + "".join(parts) + "</header>"


def _why_list(results: Sequence[ScanResult], others: Sequence[Mapping[str, Any]] = ()) -> str:
    items = []
    for r in results:
        v = _method_verdict(r)
        items.append(f"<li>{_pill(v, 'flags' if r.backdoored else 'clean')} <b>{_e(r.method)}</b>: {_e(why(r))}</li>")
    for m in others:  # methods that failed or were not run, with why
        status = str(m.get("status", "skipped"))
        text = m.get("why") or m.get("error") or ""
        items.append(f"<li>{_pill('error' if status == 'failed' else 'muted', status)} <b>{_e(m.get('method'))}</b>: "
                     f"{_e(text)}</li>")
    return "<h2>Why</h2><ul class='why'>" + "".join(items) + "</ul>"


def _name(c: int, names: Sequence[str] | None) -> str:
    return f"{c} ({names[c]})" if names and 0 <= c < len(names) and names[c] != str(c) else str(c)


def _trigger_section(ex: TriggerExamples) -> str:
    names = ex.class_names
    if ex.flagged:
        head = f"The reversed trigger of class {_name(ex.target, names)} ({ex.method})"
    else:
        head = (f"The most suspicious candidate trigger: class {_name(ex.target, names)} "
                f"({ex.method}; not flagged)")
    panels = []
    size = 144
    if ex.mask is not None:
        panels.append(("mask m", image_png(ex.mask, size)))
        panels.append(("pattern p (used only where m > 0)", image_png(ex.pattern, size)))
        panels.append(("m · p (what is stamped)", image_png(ex.pattern * ex.mask, size)))
    else:
        panels.append(("additive pattern v (rescaled)", image_png(ex.pattern, size, signed=True)))
    trig = "".join(f'<figure><img class="px" alt="{_e(c)}" src="{_b64(p)}" width="{size}" height="{size}">'
                   f"<figcaption>{_e(c)}</figcaption></figure>" for c, p in panels)
    cells = []
    for i in range(len(ex.labels)):
        b, a = ex.pred_before[i], ex.pred_after[i]
        before = image_png(ex.images[i], 64)
        after = image_png(ex.stamped[i], 64)
        cls = ' class="hit"' if a == ex.target else ""
        cells.append(
            f'<figure><div class="pair"><img class="px" alt="clean image" src="{_b64(before)}" width="64" height="64">'
            f'<img class="px" alt="with trigger" src="{_b64(after)}" width="64" height="64"></div>'
            f"<figcaption>true {_e(_name(ex.labels[i], names))}<br>model: {_e(b)} → <span{cls}>{_e(a)}</span>"
            "</figcaption></figure>")
    effect = (f"On {ex.n_evaluated} clean images of other classes the trigger makes the model predict "
              f"class {ex.target} for <b>{ex.flip_rate:.0%}</b> of them (without it: {ex.clean_rate:.0%}).")
    return (f"<h2>{_e(head)}</h2><div class='trig'>{trig}</div>"
            f"<p>{effect}</p><p class='muted'>Each pair: a clean image, then the same image with the "
            f"trigger stamped; below, the model's prediction before → after.</p>"
            f"<div class='ex'>{''.join(cells)}</div>")


def _stat_cell(r: ScanResult) -> str:
    return f"{_num(r.statistic)}<br><span class='muted'>{_e(r.statistic_key)}</span>"


def _thr_cell(r: ScanResult) -> str:
    if r.threshold is None:
        return "–"
    on = "p-value" if r.threshold_on == "p_value" else r.statistic_key
    rel = "&lt;" if r.threshold_on == "p_value" else "&gt;"
    return f"{rel} {_num(r.threshold)}<br><span class='muted'>on {_e(on)}</span>"


def verdict_table(results: Sequence[ScanResult]) -> str:
    """Every method's verdict, statistic (named), threshold (and what it applies to), p-value."""
    rows = ["<tr><th>method</th><th>verdict</th><th>target</th><th>statistic</th><th>flags when</th>"
            "<th>p-value</th><th>s</th></tr>"]
    for r in results:
        note = r.extra.get("experimental") if isinstance(r.extra, dict) else None
        name = _e(r.method) + (f' <span class="muted" title="{_e(note)}">(experimental)</span>' if note else "")
        rows.append(f"<tr><td>{name}</td><td>{_pill(_method_verdict(r), 'BACKDOORED' if r.backdoored else 'clean')}"
                    f"</td><td class='n'>{_num(r.target)}</td><td class='n'>{_stat_cell(r)}</td>"
                    f"<td>{_thr_cell(r)}</td><td class='n'>{_num(r.p_value)}</td><td class='n'>{r.seconds:.1f}</td></tr>")
    return "<table class='methods'>" + "".join(rows) + "</table>"


def per_class_table(r: ScanResult) -> str:
    """Per-class vectors of ``r`` as a table (one row per class); the charted class marked."""
    vecs = {k: v for k, v in r.per_class.items()
            if isinstance(v, list) and v and all(_is_num(x) for x in v)}
    if not vecs:
        return ""
    k = max(len(v) for v in vecs.values())
    vecs = {n: v for n, v in vecs.items() if len(v) == k}
    cand = candidate(r)
    head = "<tr><th>class</th>" + "".join(f"<th>{_e(n)}</th>" for n in vecs) + "</tr>"
    body = "".join(f"<tr{' class=mark' if c == cand else ''}><td class='n'>{c}</td>"
                   + "".join(f"<td class='n'>{_num(v[c])}</td>" for v in vecs.values()) + "</tr>"
                   for c in range(k))
    others = [n for n in r.per_class if n not in vecs]
    more = f"<p class='muted'>also in report.json: {_e(', '.join(others))}</p>" if others else ""
    return f"<table>{head}{body}</table>{more}"


def _method_section(r: ScanResult) -> str:
    out = [f"<h3 id='m-{_e(r.method)}'>{_pill(_method_verdict(r), 'flags' if r.backdoored else 'clean')} "
           f"{_e(r.method)}</h3><p>{_e(why(r))}</p>"]
    formula = r.extra.get("statistic") if isinstance(r.extra, dict) else None
    if isinstance(formula, str):  # the method's own definition of its statistic
        out.append(f"<p class='muted'>{_e(r.statistic_key)}: {_e(formula)}</p>")
    try:
        out += [_img(f) for f in all_figures(r)]
    except Exception as e:  # a broken figure must not lose the rest of the report
        out.append(f"<p class='muted'>figures failed: {_e(repr(e))}</p>")
    table = per_class_table(r)
    if table:
        key = per_class_key(r)
        out.append(f"<details><summary>per-class values{' (' + _e(key) + ' charted)' if key else ''}</summary>"
                   f"{table}</details>")
    if r.params:
        out.append("<details><summary>parameters</summary>" + _kv_table(r.params) + "</details>")
    if r.extra:
        out.append("<details><summary>details</summary>" + _kv_table(r.extra) + "</details>")
    return "".join(out)


def _extra_section(name: str, value: Any) -> str:
    out = [f"<h2>{_e(name)}</h2>"]
    if isinstance(value, list) and value and all(isinstance(f, tuple) and len(f) == 2
                                                 and isinstance(f[1], bytes) for f in value):
        out += [_img(f) for f in value]  # a list of (caption, png) figures
    elif isinstance(value, str):
        out.append(f"<p>{_e(value)}</p>")
    else:
        out.append(_value_html(to_jsonable(value)))
    return "".join(out)


def render_html(title: str, results: Sequence[ScanResult], extra_sections: Mapping[str, Any] | None = None, *,
                verdict: Mapping[str, Any] | None = None, examples: TriggerExamples | None = None,
                envelope: Mapping[str, Any] | None = None,
                other_methods: Sequence[Mapping[str, Any]] = ()) -> str:
    """The report as an HTML string (see :func:`write_html`)."""
    v = dict(verdict) if verdict is not None else fallback_verdict(results)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    env = dict(envelope or {})
    meta = [f"trojanscope report, {now}"]
    model = env.get("model")
    if isinstance(model, Mapping) and model.get("path"):
        meta.insert(0, f"model {model['path']}")
    data = env.get("data")
    if isinstance(data, Mapping):
        dname = data.get("dataset") or data.get("name")
        n = data.get("n_clean", data.get("n_images"))
        if dname or n:
            meta.insert(1, f"{n if n is not None else '?'} clean {dname or ''} images".replace("  ", " ")
                        + (f" ({data['split']} split)" if data.get("split") else ""))
    sanity = env.get("sanity")
    if isinstance(sanity, Mapping) and sanity.get("accuracy") is not None:
        meta.append(f"model accuracy on them {float(sanity['accuracy']):.0%}")
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>", _banner(v, examples),
             f"<p class='meta'>{_e(' · '.join(meta))}</p>"]
    if results or other_methods:
        parts.append(_why_list(results, other_methods))
    else:
        parts.append("<p>no model scans in this report</p>")
    if examples is not None:
        parts.append(_trigger_section(examples))
    if results:
        parts.append("<h2>Methods</h2>" + verdict_table(results))
        parts += [_method_section(r) for r in results]
    for name, value in (extra_sections or {}).items():
        parts.append(_extra_section(name, value))
    if env:
        shown = {k: x for k, x in env.items() if k in ("model", "data", "sanity")}
        folded = {k: x for k, x in env.items() if k not in shown and k != "versions"}
        parts.append("<h2>Scan</h2>" + (_kv_table(shown) if shown else "")
                     + "".join(f"<details><summary>{_e(k)}</summary>{_kv_table({k: x})}</details>"
                               for k, x in folded.items()))
    parts.append("<h2>Versions</h2>" + _kv_table(env.get("versions") or versions()))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, title: str, results: Sequence[ScanResult],
               extra_sections: Mapping[str, Any] | None = None, *, verdict: Mapping[str, Any] | None = None,
               examples: TriggerExamples | None = None, envelope: Mapping[str, Any] | None = None) -> Path:
    """Write a self-contained HTML report (atomically).

    Args:
        path: output file.
        title: page title.
        results: the scans to show.
        extra_sections: name -> content: a list of (caption, PNG bytes) figures, a string, or
            JSON-like data (shown as tables).
        verdict: the combined verdict (``verdict``, ``reason``, ``target``, ``sources``,
            optional ``hint``); default: :func:`~.explain.fallback_verdict` of ``results``.
        examples: the reversed trigger stamped on clean images (:func:`~.prep.trigger_examples`).
        envelope: model, data, parameters, versions of the run (shown as tables).
    """
    atomic_write_bytes(path, render_html(title, results, extra_sections, verdict=verdict, examples=examples,
                                         envelope=envelope).encode("utf-8"))
    return Path(path)


def render_scan_html(report: ScanReport, examples: TriggerExamples | None = None, *,
                     title: str | None = None) -> str:
    """The HTML of a :class:`~trojanscope.workflows.ScanReport` (see :func:`write_scan_html`)."""
    d = report.to_dict()
    name = d["model"].get("name") or Path(str(d["model"].get("path") or "model")).name
    others = [m for m in d["methods"] if m["status"] != "ok"]
    env = {k: d[k] for k in ("model", "data", "sanity", "parameters", "timings", "versions") if d.get(k)}
    return render_html(title or f"trojanscope scan: {name}", report.results, verdict=d["verdict"],
                       examples=examples, envelope=env, other_methods=others)


def write_scan_html(path: str | Path, report: ScanReport, examples: TriggerExamples | None = None, *,
                    title: str | None = None) -> Path:
    """Write the HTML report of a scan (atomically): the verdict banner, why per method (also
    those that failed or were skipped), the trigger examples, the methods' sections, the envelope."""
    atomic_write_bytes(path, render_scan_html(report, examples, title=title).encode("utf-8"))
    return Path(path)
