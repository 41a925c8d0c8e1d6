"""``summary.html`` of a fleet scan: counts, the slowest models, every row with a link to its
report, and, when the manifest gave ground truth, a confusion table and the ROC curve / AUC of
the combined p-value. Self-contained (inline SVG), no network."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..utils import atomic_write_bytes

VERDICT_ORDER = ("backdoored", "clean", "inconclusive", "error")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1000px;
color:#222;padding:0 1em}h1{font-size:1.5em;overflow-wrap:anywhere}h2{border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;max-width:100%}td,th{border:1px solid #ccc;
padding:.25em .5em;text-align:left;font-size:.9em;overflow-wrap:anywhere}th{background:#f3f3f3}
.backdoored{background:#ffcdd2}.clean{background:#c8e6c9}.inconclusive{background:#fff3c4}
.error{background:#e0e0e0}.muted{color:#666;font-size:.85em}svg{max-width:100%;height:auto}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _score(r: dict[str, Any]) -> float | None:
    """Higher = more suspicious: 1 - p where a p-value exists, else the verdict itself."""
    p = r.get("p_value")
    if isinstance(p, (int, float)):
        return 1.0 - float(p)
    if r.get("verdict") in ("clean", "backdoored"):
        return 1.0 if r["verdict"] == "backdoored" else 0.0
    return None


def roc(rows: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], float | None]:
    """ROC points and AUC (ties counted half) over rows with ground truth and a score."""
    pts = [(s, bool(r["truth"])) for r in rows
           if r.get("truth") is not None and (s := _score(r)) is not None]
    pos = sum(t for _, t in pts)
    neg = len(pts) - pos
    if not pos or not neg:
        return [], None
    wins = sum((sp > sn) + 0.5 * (sp == sn) for sp, tp in pts if tp for sn, tn in pts if not tn)
    curve = [(0.0, 0.0)]
    for thr in sorted({s for s, _ in pts}, reverse=True):
        tp = sum(1 for s, t in pts if t and s >= thr)
        fp = sum(1 for s, t in pts if not t and s >= thr)
        curve.append((fp / neg, tp / pos))
    return curve, wins / (pos * neg)


def _svg(curve: list[tuple[float, float]], auc: float) -> str:
    w = h = 260
    pad = 30
    pts = " ".join(f"{pad + x * (w - 2 * pad):.1f},{h - pad - y * (h - 2 * pad):.1f}" for x, y in curve)
    return (f'<svg viewBox="0 0 {w} {h}" width="{w}" role="img" aria-label="ROC curve, AUC {auc:.3f}">'
            f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" stroke="#999"/>'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{pad}" stroke="#ccc" stroke-dasharray="4"/>'
            f'<polyline points="{pts}" fill="none" stroke="#c62828" stroke-width="2"/>'
            f'<text x="{w / 2}" y="{h - 6}" font-size="11" text-anchor="middle">false-positive rate</text>'
            f'<text x="10" y="{h / 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 10 {h / 2})">true-positive rate</text>'
            f'<text x="{w - pad - 4}" y="{h - pad - 6}" font-size="12" text-anchor="end">AUC {auc:.3f}</text></svg>')


def _truth_cell(r: dict[str, Any]) -> str:
    """The manifest's ground truth for one row: "backdoored -> 3", "clean" or nothing."""
    if r.get("truth") is None:
        return ""
    if not r["truth"]:
        return "clean"
    return "backdoored" + ("" if r.get("true_target") is None else _e(f" -> {r['true_target']}"))


def write_summary(path: str | Path, rows: list[dict[str, Any]], *, title: str) -> None:
    """Write the fleet's summary page (atomically)."""
    counts = {v: sum(r.get("verdict") == v for r in rows) for v in VERDICT_ORDER}
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>trojanscope fleet: {_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Fleet scan: {_e(title)}</h1>",
             "<table><tr>" + "".join(f"<th class='{v}'>{v}</th>" for v in VERDICT_ORDER)
             + "<th>total</th></tr><tr>" + "".join(f"<td>{counts[v]}</td>" for v in VERDICT_ORDER)
             + f"<td>{len(rows)}</td></tr></table>"]
    truthful = [r for r in rows if r.get("truth") is not None]
    if truthful:
        parts.append("<h2>Against the manifest's ground truth</h2>")
        head = "".join(f"<th>{v}</th>" for v in VERDICT_ORDER)
        body = ""
        for t, name in ((True, "backdoored"), (False, "clean")):
            sub = [r for r in truthful if bool(r["truth"]) == t]
            body += f"<tr><th>truly {name} ({len(sub)})</th>" + "".join(
                f"<td>{sum(r.get('verdict') == v for r in sub)}</td>" for v in VERDICT_ORDER) + "</tr>"
        parts.append(f"<table><tr><th></th>{head}</tr>{body}</table>")
        with_t = [r for r in truthful if r.get("truth") and r.get("true_target") is not None]
        if with_t:
            right = sum(r.get("verdict") == "backdoored" and r.get("target") == r["true_target"]
                        for r in with_t)
            parts.append(f"<p>Flagged with the right target: {right} of {len(with_t)} backdoored "
                         f"models.</p>")
        curve, auc = roc(truthful)
        if auc is not None:
            parts.append(f"<p>AUC of the combined evidence (1 - p-value): <b>{auc:.3f}</b></p>"
                         + _svg(curve, auc))
    timed = sorted((r for r in rows if isinstance(r.get("seconds"), (int, float))),
                   key=lambda r: -r["seconds"])[:10]
    if timed:
        parts.append("<h2>Slowest models</h2><table><tr><th>model</th><th>seconds</th></tr>"
                     + "".join(f"<tr><td>{_e(r['model'])}</td><td>{r['seconds']:.1f}</td></tr>"
                               for r in timed) + "</table>")
    truth_col = any(r.get("truth") is not None for r in rows)
    parts.append("<h2>Every model</h2><table><tr><th>model</th><th>verdict</th><th>target</th>"
                 + ("<th>truth (manifest)</th>" if truth_col else "")
                 + "<th>p-value</th><th>seconds</th><th>error</th></tr>")
    for r in rows:
        name = _e(r["model"])
        link = f"<a href='{_e(r['report'])}'>{name}</a>" if r.get("report") else name
        p = r.get("p_value")
        secs = r.get("seconds")
        parts.append(f"<tr><td>{link}</td><td class='{_e(r.get('verdict'))}'>{_e(r.get('verdict'))}</td>"
                     f"<td>{_e(r.get('target'))}</td>" + (f"<td>{_truth_cell(r)}</td>" if truth_col else "")
                     + f"<td>{'' if p is None else f'{p:.3g}'}</td>"
                     f"<td>{'' if secs is None else f'{secs:.1f}'}</td>"
                     f"<td>{_e(r.get('error'))}</td></tr>")
    parts.append("</table><p class='muted'>One row per model of results.jsonl; each scan ran in its "
                 "own process with the scan command's limits.</p></body></html>")
    atomic_write_bytes(path, "\n".join(parts).encode())
