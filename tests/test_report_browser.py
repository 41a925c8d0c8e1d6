"""The HTML report in a real headless browser (Debian's ``chromium``, installed by ``.ci/run``):
it loads, shows the verdict first, every image decodes, and nothing overflows at 700 px.

Skipped only when chromium is absent outside CI; with ``CI=true`` a missing browser fails.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from test_report import _corner_data, _CornerModel, _lred, _nc

from trojanscope.report.html import write_scan_html
from trojanscope.report.json_report import report_from_results
from trojanscope.report.prep import trigger_examples
from trojanscope.types import ScanResult
from trojanscope.workflows import MethodRun

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]

# appended to a copy of the report (the report itself has no script): opens every <details>,
# then writes what it measured into the DOM, which --dump-dom returns
CHECK = """<script>
addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const vw = document.documentElement.clientWidth, bad = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    const spill = el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0 &&
                  getComputedStyle(el).overflowX === 'visible';  // text wider than its box
    if (r.right > vw + 0.5 || r.left < -0.5 || spill)
      bad.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ' ' +
               Math.round(r.left) + '..' + Math.round(r.right));
  }
  const v = document.getElementById('verdict');
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify({
    viewport: vw, scroll_width: document.documentElement.scrollWidth, overflow: bad.slice(0, 20),
    n_overflow: bad.length, images: document.images.length,
    broken_images: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length,
    verdict: v ? v.innerText : null, verdict_top: v ? v.getBoundingClientRect().top : null});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def layout(page: Path, tmp_path: Path, width: int = 700) -> dict:
    """Load ``page`` (plus the check script) in headless chromium at ``width`` px; the measurements."""
    probe = tmp_path / f"probe-{page.stem}.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    cmd = [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
           f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="layout-check">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the page did not load (exit {res.returncode}): {res.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def _bias_maps_result() -> ScanResult:
    """A bias-maps result: its figures come from the figure registry (map grid, distances)."""
    g = torch.Generator().manual_seed(0)
    return ScanResult(method="bias_maps", backdoored=True, target=0, statistic=1.7, anomaly_index=4.2,
                      threshold=1.0, statistic_key="score",
                      per_class={"score": [1.7] + [0.2] * 9, "distance": [3.0] + [0.5] * 9,
                                 "z": [4.2] + [0.1] * 9, "ratio_pred": [0.9] * 10},
                      trigger={"bias_maps": torch.rand(10, 1, 8, 8, generator=g),
                               "reference_maps": torch.rand(10, 1, 8, 8, generator=g)},
                      extra={"comparison": "reference", "verdict_rule": "score = min(z / 3, d / 2) > 1 " * 3})


def test_report_renders_in_chromium_without_overflow_at_700px(tmp_path):
    model, data = _CornerModel().eval(), _corner_data()
    mask = torch.zeros(10, 1, 8, 8)
    mask[:, :, -2:, -2:] = 1
    nc = _nc(True)
    nc.target, nc.trigger = 0, {"mask": mask, "pattern": torch.ones(10, 1, 8, 8)}
    nc.per_class["anomaly_index"] = [5.1] + [0.1] * 9
    results = [nc, _lred(False), _bias_maps_result()]
    report = report_from_results(
        results, model={"path": "/a/very/long/path/" + "nested/" * 20 + "a_model_with_a_long_name.safetensors",
                        "name": "a_model_with_a_rather_long_file_name_to_wrap.safetensors"},
        data={"name": "digits", "split": "train", "n_images": 60},
        parameters={"methods": ["neural_cleanse", "lred", "bias_maps"], "seed": 0,
                    "method_params": {r.method: {"epochs": 5, "note": "y" * 90} for r in results}})
    report.methods.append(MethodRun("ulp", "skipped", why="needs a trained ULP file (--ulp FILE)"))
    report.methods.append(MethodRun("mm_bd", "failed", error="boom", why="mm_bd could not run: " + "z" * 120))
    page = write_scan_html(tmp_path / "report.html", report, trigger_examples(model, data, results, target=0))
    text = page.read_text()
    assert "needs a trained ULP file" in text and "mm_bd could not run" in text
    for width in (700, 1280):
        got = layout(page, tmp_path, width)
        assert got["viewport"] == width
        assert got["verdict"] and got["verdict"].startswith(report.verdict.verdict.upper())
        assert "target class 0" in got["verdict"]
        assert got["verdict_top"] < 200  # the verdict is the first thing on the page
        assert got["images"] >= 10 and got["broken_images"] == 0
        assert got["n_overflow"] == 0 and got["scroll_width"] <= width, got["overflow"]


def test_overflow_check_can_fail(tmp_path):
    page = tmp_path / "wide.html"
    page.write_text("<!DOCTYPE html><html><body><header id='verdict'>CLEAN</header>"
                    "<table><tr><td style='white-space:nowrap'>" + "wide " * 300 + "</td></tr></table></body></html>")
    got = layout(page, tmp_path)
    assert got["verdict"] == "CLEAN" and got["n_overflow"] > 0 and got["scroll_width"] > 700
