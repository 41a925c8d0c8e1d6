"""JSON (schema), HTML, figures, trigger examples and trigger files (synthetic results: no training)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trojanscope import _registry
from trojanscope.data import ImageData
from trojanscope.report import figures, registry
from trojanscope.report.explain import why
from trojanscope.report.html import render_html, write_html
from trojanscope.report.json_report import (
    combined_verdict,
    report_from_results,
    scan_report,
    write_json,
)
from trojanscope.report.prep import trigger_examples
from trojanscope.report.schema import SCHEMA_VERSION, scan_report_schema, validate
from trojanscope.report.triggers import save_triggers
from trojanscope.types import ScanResult

RED = (0xC6, 0x28, 0x28)
AMBER = (0xE6, 0x95, 0x00)


def _nc(backdoored: bool = True, target: int | None = 3) -> ScanResult:
    g = torch.Generator().manual_seed(0)
    l1 = (torch.rand(10, generator=g) * 10 + 30).tolist()
    idx = [0.1] * 10
    if backdoored:
        l1[3], idx[3] = 4.0, 5.1
    return ScanResult(method="neural_cleanse", backdoored=backdoored, target=target if backdoored else None,
                      statistic=5.1 if backdoored else 1.2, anomaly_index=5.1, threshold=2.0,
                      p_value=0.001 if backdoored else 0.6, statistic_key="anomaly_index",
                      per_class={"mask_l1": l1, "anomaly_index": idx},
                      trigger={"mask": torch.rand(10, 1, 8, 8, generator=g),
                               "pattern": torch.rand(10, 3, 8, 8, generator=g)},
                      extra={"candidate_target": 3}, seconds=1.5, params={"epochs": 5})


def _lred(backdoored: bool = False) -> ScanResult:
    return ScanResult(method="lred", backdoored=backdoored, target=3 if backdoored else None,
                      sources=[1, 2] if backdoored else [], statistic=0.7, p_value=0.4, threshold=0.05,
                      statistic_key="r", threshold_on="p_value",
                      per_class={"r": [0.1 * i for i in range(10)], "weights": [[0.1] * 10] * 10},
                      trigger={"pattern": torch.randn(10, 1, 8, 8)}, extra={"candidate_target": 9},
                      seconds=0.5)


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def _has_colour(png: bytes, rgb: tuple[int, int, int]) -> bool:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    return any(n >= 20 and c == rgb for n, c in im.getcolors(1 << 20))  # a bar, not a stray pixel


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


def _report(results, **kw):
    return report_from_results(results, model={"path": "m.safetensors"},
                               data={"name": "digits", "n_images": 20}, **kw)


def test_json_report_validates_against_the_shipped_schema(tmp_path):
    rep = scan_report(_report([_nc(True), _lred(False)]))
    d = json.loads(write_json(tmp_path / "r.json", rep).read_text())
    validate(d)
    assert d["kind"] == "scan" and d["schema"] == SCHEMA_VERSION and d["model"]["path"] == "m.safetensors"
    v = d["verdict"]
    assert v["verdict"] == "backdoored" and v["target"] == 3 and v["reason"] and v["exit_code"] == 1
    r0, r1 = (m["result"] for m in d["methods"])
    assert r0["trigger"] == {"mask": [10, 1, 8, 8], "pattern": [10, 3, 8, 8]} and r0["p_value"] == 0.001
    assert r1["statistic_key"] == "r" and r1["threshold_on"] == "p_value" and r1["p_value"] == 0.4
    assert d["trigger_effect"] is None
    # non-finite numbers become null and still validate; a clean scan validates
    bad = _nc(False)
    bad.statistic = float("nan")
    d2 = json.loads(json.dumps(scan_report(_report([bad, _lred(False)]))))
    validate(d2)
    assert d2["verdict"]["verdict"] == "clean" and d2["verdict"]["exit_code"] == 0


def test_schema_version_is_the_workflow_layout_version():
    from trojanscope.workflows import REPORT_SCHEMA

    assert scan_report_schema()["properties"]["schema"] == {"const": REPORT_SCHEMA} and SCHEMA_VERSION == REPORT_SCHEMA


def test_inputs_and_repair_reports_validate_against_their_shipped_schemas():
    """Every report shares the envelope (workflows.Envelope); each kind has its schema file."""
    from trojanscope.types import InputScores, MitigationResult
    from trojanscope.workflows import GuardReport, RepairReport

    env = {"model": {"path": "m.pt2"}, "data": {"name": "digits", "n_images": 30},
           "timings": {"fit": {"kde": 0.5}, "total": 1.0}}
    n = 5000  # more scores than a result's to_dict() keeps: the guard report writes every one
    scores = torch.linspace(0, 1, n)
    scores[0] = float("nan")
    g = GuardReport(scores > 0.9, torch.zeros(n, dtype=torch.long),
                    [InputScores("kde", scores, scores > 0.9, 0.9, seconds=0.1)], 0.05, True,
                    parameters={"per_method_fpr": {"kde": 0.05}}, **env).to_dict()
    validate(json.loads(json.dumps(g)))
    assert g["kind"] == "inputs" and g["verdict"]["exit_code"] == 1 and len(g["results"][0]["scores"]) == n
    assert g["results"][0]["scores"][0] is None and g["results"][0]["fit_seconds"] == 0.5
    r = RepairReport(MitigationResult("unlearn", torch.nn.Linear(1, 1), 0.98, 0.97, asr_true_before=0.99,
                                      asr_true_after=0.02), parameters={"method": "unlearn"}, **env).to_dict()
    validate(json.loads(json.dumps(r)))
    assert r["kind"] == "mitigate" and r["schema"] == SCHEMA_VERSION
    for doc, breakage, where in ((g, lambda d: d["results"][0].update(flags="yes"), "at results/0/flags"),
                                 (g, lambda d: d["verdict"].update(exit_code=3), "at verdict/exit_code"),
                                 (r, lambda d: d["result"].update(verdict="fixed"), "at result/verdict"),
                                 (r, lambda d: d["result"].update(cta_after=1.5), "at result/cta_after")):
        broken = json.loads(json.dumps(doc))
        breakage(broken)
        with pytest.raises(ValueError, match=re.escape(where)):
            validate(broken)

@pytest.mark.parametrize("breakage, where", [
    (lambda d: d["verdict"].update(verdict="maybe"), "at verdict/verdict"),
    (lambda d: d["verdict"].update(exit_code=0), "at verdict/exit_code"),
    (lambda d: d.pop("methods"), "'methods' is a required property"),
    (lambda d: d["methods"][0]["result"].update(p_value=1.5), "at methods/0/result/p_value"),
    (lambda d: d["methods"][0]["result"].update(threshold_on="r"), "at methods/0/result/threshold_on"),
    (lambda d: d["methods"][0].update(status="ok", result=None), "at methods/0/result"),
    (lambda d: d.update(schema=3), "at schema"),
    (lambda d: d["methods"][1]["result"]["trigger"].update(pattern="big"), "at methods/1/result/trigger/pattern"),
])
def test_schema_rejects_broken_reports(breakage, where):
    d = json.loads(json.dumps(scan_report(_report([_nc(True), _lred(False)]))))
    validate(d)
    breakage(d)
    with pytest.raises(ValueError, match=re.escape(where)):
        validate(d)


def test_schema_is_package_data():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "report/schemas/*.json" in pyproject  # shipped in the wheel
    assert scan_report_schema()["properties"]["verdict"]["properties"]["verdict"]["enum"] == [
        "clean", "backdoored", "inconclusive"]


def test_html_is_self_contained_and_leads_with_the_verdict(tmp_path):
    calls = []

    @registry.register_figures("lred")
    def _extra(result):
        calls.append(result.method)
        return [("lred special figure", figures.bar_chart([1.0, 2.0, 3.0], title="special"))]

    try:
        path = write_html(tmp_path / "r.html", "my <title>", [_nc(True), _lred(False)],
                          verdict={"verdict": "backdoored", "target": 3, "reason": "because <b>", "sources": []},
                          extra_sections={"demo": {"models": {"clean": {"cta": 0.98, "asr": 0.1}},
                                                   "rows": [{"method": "strip", "auc": 0.9}],
                                                   "matrix": [[0.5] * 30] * 30},
                                          "notes": "a & b"})
    finally:
        registry.unregister_figures("lred")
    text = path.read_text()
    assert calls == ["lred"] and "lred special figure" in text
    assert "my &lt;title&gt;" in text and "a &amp; b" in text and "because &lt;b&gt;" in text  # escaped
    assert not re.search(r'(src|href)="(?!data:)', text) and "<script" not in text and "@import" not in text
    banner = text.index('id="verdict"')
    assert banner < text.index("<h2>Why</h2>") < text.index("<h2>Methods</h2>")
    assert 'data-verdict="backdoored"' in text and "BACKDOORED" in text and "target class 3" in text
    # one "why" sentence per method, built from the numbers
    assert "its anomaly index is 5.1, above the threshold 2" in text
    assert "p = 0.4, not below 0.05" in text
    # tables, not raw JSON: no JSON dumps of nested data
    assert "{&quot;" not in text and '{"' not in text and "0.98" in text and "strip" in text
    pngs = _pngs(text)
    assert len(pngs) >= 5 and all(p.startswith(b"\x89PNG") for p in pngs)


def test_lred_threshold_is_named_for_the_p_value_not_r():
    r = _lred(False)
    cap, png = figures.class_statistic_figure(r)
    assert "r per class" in cap and "p-value" in cap and "no threshold on this axis" in cap
    assert "dashed line" not in cap  # the 0.05 threshold is not drawn on the r axis
    row = re.search(r"<tr><td>lred</td>.*?</tr>", render_html("t", [r])).group(0)
    assert "on p-value" in row and "&lt; 0.05" in row
    nc_cap, _ = figures.class_statistic_figure(_nc(True))
    assert "dashed line = decision threshold 2 on anomaly_index" in nc_cap


def test_chart_colours_agree_with_the_method_verdict():
    flagged = figures.class_statistic_figure(_nc(True))[1]
    assert _has_colour(flagged, RED) and not _has_colour(flagged, AMBER)
    clean = figures.class_statistic_figure(_nc(False))[1]
    assert not _has_colour(clean, RED) and _has_colour(clean, AMBER)  # most suspicious, not flagged
    lred_clean = figures.class_statistic_figure(_lred(False))[1]
    assert not _has_colour(lred_clean, RED)


def test_figure_registry_replaces_method_names_in_figures():
    src = Path(figures.__file__).read_text()
    for name in _registry.available("model_detector"):
        assert f'"{name}"' not in src, f"figures.py names the method {name}"
    assert "bias_maps" in registry.registered()  # the bias-map figures come from the registry
    bare = ScanResult(method="unknown_method", backdoored=False, statistic=0.1)
    assert registry.all_figures(bare) == [] and "unknown_method" in render_html("t", [bare])
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


def test_why_sentences_follow_the_display_metadata():
    assert why(_nc(True)).startswith("class 3 stands out: its anomaly index is 5.1, above the threshold 2")
    assert "class 3" in why(_nc(False)) and "not above the threshold 2" in why(_nc(False))
    s = why(_lred(True))
    assert "class 3 stands out" in s and "p = 0.4" in s and "sources: 1, 2" in s


class _CornerModel(torch.nn.Module):
    """Class 0 when the bottom-right 2x2 corner is bright, else the image's label (its mean level)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        lab = (x[:, 0, :4, :4].mean((1, 2)) * 10).round().long().clamp(0, 9)
        hit = x[:, :, -2:, -2:].mean((1, 2, 3)) > 0.9
        lab = torch.where(hit, torch.zeros_like(lab), lab)
        return torch.nn.functional.one_hot(lab, 10).float() + self.w


def _corner_data() -> ImageData:
    y = torch.arange(10).repeat(6)
    x = (y.float() / 10)[:, None, None, None].expand(-1, 1, 8, 8).clone()
    return ImageData(x=x, y=y, num_classes=10)


def test_trigger_examples_stamp_the_target_trigger_and_record_predictions():
    model, data = _CornerModel().train(), _corner_data()
    mask = torch.zeros(10, 1, 8, 8)
    mask[:, :, -2:, -2:] = 1
    r = ScanResult(method="m", backdoored=True, target=0,
                   trigger={"mask": mask, "pattern": torch.ones(10, 1, 8, 8)})
    ex = trigger_examples(model, data, [_lred(False), r], target=0, n=4, seed=1)
    assert model.training  # the model's mode is restored
    assert ex.method == "m" and ex.target == 0 and ex.flagged and ex.kind == "mask_pattern"
    assert len(ex.labels) == 4 and 0 not in ex.labels and len(set(ex.labels)) == 4
    assert ex.pred_before == ex.labels and ex.pred_after == [0] * 4
    assert ex.flip_rate == 1.0 and ex.clean_rate == 0.0 and ex.n_evaluated == 54
    assert torch.equal(ex.stamped[:, :, -2:, -2:], torch.ones(4, 1, 2, 2))
    json.dumps(ex.to_dict())
    # no flagging method: the most suspicious candidate, marked as not flagged; additive pattern
    ex2 = trigger_examples(model, data, [_lred(False)])
    assert ex2.method == "lred" and ex2.target == 9 and not ex2.flagged and ex2.kind == "additive"
    assert trigger_examples(model, data, [ScanResult(method="ulp", backdoored=True)]) is None


def test_save_triggers_writes_safetensors_and_pngs(tmp_path):
    from safetensors import safe_open

    nc, lr = _nc(True), _lred(False)
    files = save_triggers([nc, lr, ScanResult(method="ulp", backdoored=False)], tmp_path / "t")
    names = sorted(p.name for p in files)
    assert names == sorted(["neural_cleanse.safetensors", "lred.safetensors"]
                           + [f"{m}_class{k}.png" for m in ("neural_cleanse", "lred") for k in range(10)])
    with safe_open(str(tmp_path / "t" / "neural_cleanse.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("mask"), nc.trigger["mask"])
        meta = f.metadata()
    assert meta["kind"] == "mask_pattern" and meta["target"] == "3" and "eq. 2" in meta["formula"]
    im = Image.open(tmp_path / "t" / "neural_cleanse_class3.png")
    assert im.mode == "RGBA" and im.size == (8, 8)  # native size; opacity = the mask
    alpha = torch.from_numpy(np.array(im.getchannel("A"), dtype=np.float32)) / 255
    assert torch.allclose(alpha, nc.trigger["mask"][3, 0], atol=1 / 255)
    assert Image.open(tmp_path / "t" / "lred_class0.png").mode == "RGB"


@pytest.mark.parametrize("verdict, colour_class, shown", [
    ({"verdict": "clean", "reason": "no method finds a class that stands out", "target": None}, "clean", "CLEAN"),
    ({"verdict": "inconclusive", "reason": "the model classifies 12% of the scan images correctly",
      "hint": "try --normalize imagenet", "target": None}, "inconclusive", "INCONCLUSIVE"),
])
def test_banner_for_clean_and_inconclusive(verdict, colour_class, shown):
    model, data = _CornerModel().eval(), _corner_data()
    results = [_nc(False), _lred(False)]
    ex = trigger_examples(model, data, results)
    text = render_html("t", results, verdict=verdict, examples=ex)
    banner = re.search(r'<header class="banner ([a-z]+)" id="verdict" data-verdict="([a-z]+)">(.*?)</header>',
                       text, re.S)
    assert banner.group(1) == banner.group(2) == colour_class
    assert shown in banner.group(3) and verdict["reason"] in banner.group(3)
    assert "target class" not in banner.group(3) and "reversed trigger sends" not in banner.group(3)
    if "hint" in verdict:
        assert "try --normalize imagenet" in banner.group(3)
    # no confident trigger claim: the candidate is shown as such
    assert "most suspicious candidate trigger" in text and "not flagged" in text


def test_unwritable_outputs_are_clear_errors(tmp_path):
    from trojanscope.errors import InputError
    from trojanscope.report.outputs import write_scan_outputs

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rep = _report([_nc(True)])
    for kw in ({"triggers_dir": blocker / "triggers"}, {"json_path": blocker / "r.json"},
               {"html_path": blocker / "r.html"}):
        with pytest.raises(InputError, match="cannot write"):
            write_scan_outputs(rep, model=_CornerModel(), clean=_corner_data(), **kw)
    assert blocker.read_text() == "x"


def test_sanity_gate_failure_renders_and_validates(tmp_path):
    from trojanscope.combine import CombinedVerdict
    from trojanscope.report.html import write_scan_html
    from trojanscope.report.outputs import write_scan_outputs
    from trojanscope.workflows import MethodRun, SanityCheck, ScanReport

    gate = SanityCheck(passed=False, accuracy=0.26, n_images=200, chance=0.1, min_accuracy=0.5,
                       reason="the model classifies 26% of the scan images correctly",
                       hint="the images fit the ImageNet mean/std convention: --normalize imagenet")
    rep = ScanReport(CombinedVerdict("inconclusive", None, "cauchy", 0.05, reason=gate.reason, hint=gate.hint),
                     gate, [MethodRun("neural_cleanse", "skipped", why="not run: the model failed the sanity gate")],
                     model={"path": "m.safetensors"}, data={"name": "digits", "n_images": 200},
                     parameters={}, timings={})
    d = write_scan_outputs(rep, model=_CornerModel(), clean=_corner_data(), json_path=tmp_path / "r.json",
                           html_path=tmp_path / "r.html")
    validate(json.loads((tmp_path / "r.json").read_text()))
    assert d["trigger_effect"] is None and d["verdict"]["exit_code"] == 3
    text = (tmp_path / "r.html").read_text()
    assert 'data-verdict="inconclusive"' in text and "--normalize imagenet" in text
    assert "model accuracy on them 26%" in text and "not run: the model failed the sanity gate" in text
    assert "The reversed trigger" not in text and "<h2>Methods</h2>" not in text
    assert write_scan_html(tmp_path / "r2.html", rep).read_text().count('id="verdict"') == 1
