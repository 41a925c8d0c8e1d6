"""JSON and HTML scan reports (synthetic results: no training needed)."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from trojanscope.report import figures
from trojanscope.report.html import render_html, write_html
from trojanscope.report.json_report import combined_verdict, scan_report, write_json
from trojanscope.types import ScanResult


def _nc(backdoored: bool = True, target: int | None = 3) -> ScanResult:
    g = torch.Generator().manual_seed(0)
    l1 = (torch.rand(10, generator=g) * 10 + 30).tolist()
    if backdoored:
        l1[3] = 4.0
    return ScanResult(method="neural_cleanse", backdoored=backdoored, target=target if backdoored else None,
                      statistic=5.1 if backdoored else 1.2, anomaly_index=5.1, threshold=2.0,
                      per_class={"mask_l1": l1, "anomaly_index": [0.1] * 10},
                      trigger={"mask": torch.rand(10, 1, 8, 8, generator=g),
                               "pattern": torch.rand(10, 3, 8, 8, generator=g)},
                      extra={"candidate_target": 3}, seconds=1.5, params={"epochs": 5})


def _lred(backdoored: bool = False) -> ScanResult:
    return ScanResult(method="lred", backdoored=backdoored, target=3 if backdoored else None,
                      sources=[1, 2] if backdoored else [], statistic=0.7, p_value=0.4, threshold=0.05,
                      per_class={"r": [0.1 * i for i in range(10)]},
                      trigger={"pattern": torch.randn(10, 1, 8, 8)}, seconds=0.5)


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_combined_verdict_rules():
    a, b = _nc(True), _lred(False)
    c = combined_verdict([a, b])
    assert c["backdoored"] and c["votes"] == 1 and c["methods"] == 2 and c["target"] == 3
    assert not combined_verdict([a, b], rule="majority")["backdoored"]
    assert combined_verdict([a, _lred(True)], rule="majority")["target"] == 3
    assert not combined_verdict([_nc(False), b])["backdoored"]
    assert combined_verdict([])["target"] is None
    with pytest.raises(ValueError):
        combined_verdict([a], rule="vote")


def test_json_report_schema(tmp_path):
    rep = scan_report("m.safetensors", [_nc(True), _lred(False)], dataset="digits")
    path = write_json(tmp_path / "r.json", rep)
    d = json.loads(path.read_text())
    assert d["schema"] == 1 and d["model"] == "m.safetensors" and d["dataset"] == "digits"
    assert d["combined"]["backdoored"] is True
    r0, r1 = d["results"]
    for r in (r0, r1):
        assert {"method", "backdoored", "target", "sources", "statistic", "p_value", "seconds"} <= r.keys()
    assert r0["target"] == 3 and r0["p_value"] is None and r0["trigger"] == {"mask": [10, 1, 8, 8],
                                                                              "pattern": [10, 3, 8, 8]}
    assert r1["target"] is None and r1["p_value"] == 0.4


def test_html_is_self_contained_with_charts_and_triggers(tmp_path):
    calls = []

    @figures.register_figures("lred")
    def _extra(result):
        calls.append(result.method)
        return [("lred special figure", figures.bar_chart([1.0, 2.0, 3.0], title="special"))]

    try:
        path = write_html(tmp_path / "r.html", "my <title>", [_nc(True), _lred(False)],
                          extra_sections={"demo": {"models": {"clean": {"cta": 0.98, "asr": 0.1}},
                                                   "rows": [{"method": "strip", "auc": 0.9}]},
                                          "notes": "a & b"})
    finally:
        figures._FIGURES.pop("lred", None)
    text = path.read_text()
    assert calls == ["lred"] and "lred special figure" in text
    assert "my &lt;title&gt;" in text and "a &amp; b" in text  # escaped
    assert not re.search(r'(src|href)="(http|//|/)', text)  # no external assets
    pngs = _pngs(text)
    # NC: bar chart + trigger grid; lred: bar chart + pattern grid + registered figure
    assert len(pngs) >= 5 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert "BACKDOORED" in text and "threshold 2" in text and "0.98" in text and "strip" in text
    assert "combined verdict" in text


def test_figures_generic_hooks():
    r = _nc(True)
    cap, png = figures.class_statistic_figure(r)
    assert "anomaly_index" in cap and "threshold 2" in cap and png.startswith(b"\x89PNG")
    trig = figures.trigger_figures(r)
    assert len(trig) == 1 and "mask" in trig[0][0]
    # a method without figures or per-class vectors still renders (no chart, no crash)
    bare = ScanResult(method="unknown_method", backdoored=False, statistic=0.1)
    assert figures.all_figures(bare) == []
    assert "unknown_method" in render_html("t", [bare])
    # many source-specific pairs: the grid keeps the smallest masks, labelled s→t
    pairs = [[s, t] for s in range(8) for t in range(8) if s != t]
    rp = ScanResult(method="neural_cleanse", backdoored=False,
                    trigger={"mask": torch.rand(8, 1, 6, 6), "pattern": torch.rand(8, 1, 6, 6),
                             "pair_mask": torch.rand(len(pairs), 1, 6, 6),
                             "pair_pattern": torch.rand(len(pairs), 1, 6, 6)},
                    extra={"pairs": pairs})
    caps = [c for c, _ in figures.trigger_figures(rp)]
    assert len(caps) == 2 and "every class" in caps[0] and "40 smallest masks of 56" in caps[1]


def test_html_marks_experimental_methods(tmp_path):
    r = _lred(True)
    r.method, r.extra = "lred_perceptible", {"experimental": "no experiments <in> the paper"}
    text = write_html(tmp_path / "r.html", "t", [r, _nc(True)]).read_text()
    assert text.count("(experimental)") == 1 and "no experiments &lt;in&gt; the paper" in text
