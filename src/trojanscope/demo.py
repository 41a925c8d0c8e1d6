"""The end-to-end demo on the embedded digits data: train a clean and a backdoored CNN, then run
every registered detector and mitigation, and write ``report.json`` (and ``report.html``).

Needs no files and no network; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import _registry
from .attacks import PatchTrigger, PoisoningAttack
from .data import load_dataset
from .metrics import accuracy, attack_success_rate, roc_auc
from .models import create_model
from .report.html import write_html
from .report.json_report import SCHEMA, report_from_results, write_json
from .report.prep import trigger_examples
from .train import train
from .utils import to_jsonable, versions
from .workflows import ScanReport, repair_model, scan_model

Log = Callable[[str], None]

DEMO_TARGET = 0
DEMO_SIZE = 16


def demo_models(seed: int = 0, epochs: int = 15) -> dict[str, Any]:
    """Train the demo's clean and backdoored ``small_cnn`` on 16x16 digits.

    The backdoor: a 3x3 white patch, bottom-right, 10% poison, all classes -> target 0.
    """
    train_d = load_dataset("digits", "train", size=DEMO_SIZE)
    test_d = load_dataset("digits", "test", size=DEMO_SIZE)
    trigger = PatchTrigger(size=3, location="bottom_right", margin=1)
    attack = PoisoningAttack(trigger=trigger, target=DEMO_TARGET, rate=0.1, seed=seed)
    poisoned, _ = attack.poison_data(train_d)
    out: dict[str, Any] = {"train": train_d, "test": test_d, "trigger": trigger, "target": DEMO_TARGET}
    for name, data in (("clean", train_d), ("backdoored", poisoned)):
        torch.manual_seed(seed)
        m = create_model("small_cnn", 10, train_d.in_shape)
        train(m, data, epochs=epochs, lr=0.05, seed=seed)
        out[name] = m
    return out


#: The demo's settings: ``{kind: {name: {param: value}}}``, or ``None`` to skip a method that
#: needs inputs the demo does not have. A method not listed runs with its defaults. These are
#: short budgets that finish in seconds on the 16x16 digits models, not recommendations: the
#: method classes know nothing of the demo (docs/development.md).
DEMO_PARAMS: dict[str, dict[str, dict[str, Any] | None]] = {
    "model_detector": {
        # fewer, smaller epochs and a 10x larger initial cost so masks shrink fast
        "neural_cleanse": {"epochs": 60, "steps_per_epoch": 3, "batch_size": 24, "patience": 3,
                           "early_stop_patience": 6, "init_cost": 1e-2},
        "lred": {"variant": "A", "n_per_class": 8, "rel_step": 0.2},  # 4 per class: false alarms
        "lred_perceptible": {"n_per_class": 6, "steps": 200},  # 4 per class: false alarms
        "mm_bd": {"restarts": 10, "steps": 150},
        # the demo has no reference model: reference-free, small, a few seconds on a CPU
        "bias_maps": {"inputs": "data", "n_samples": 64, "iterations": 10, "eps": 0.1},
        "ulp": None,  # the demo has no trained ULP file
    },
    "input_detector": {
        "uncertainty": {"n_samples": 50},
        "strip": {"n_blend": 32},
        "mutation": {"n_mutants": 50},
    },
    # mitigations: their defaults, plus the demo settings of the scan they run first (below)
    "mitigation": {},
}


def demo_params(kind: str, name: str) -> dict[str, Any] | None:
    """The demo's parameters of a registered method (a fresh dict), or None when the demo skips it.

    A mitigation gets the demo settings of its ``scan_method`` as ``scan_params`` (all of the
    detector's parameters, as the report records them), so a repair without a given scan runs
    the same short scan as the demo.
    """
    table = DEMO_PARAMS.get(kind, {})
    if name in table and table[name] is None:
        return None
    params = dict(table.get(name) or {})
    if kind == "mitigation" and "scan_params" not in params:
        scan_method = params.get("scan_method", _registry.get(kind, name).scan_method)
        det = demo_instance("model_detector", scan_method)
        params["scan_params"] = det.get_params() if det is not None else None
    return params


def demo_instance(kind: str, name: str) -> Any:
    """An instance of a registered method with the demo's settings, or None when the demo skips it."""
    params = demo_params(kind, name)
    return None if params is None else _registry.get(kind, name)(**params)


def _demo_methods(kind: str, methods: list[str] | None, report: dict[str, Any], log: Log
                  ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, demo parameters) of every registered method of ``kind``; methods that
    need inputs the demo does not have (None in :data:`DEMO_PARAMS`) and experimental ones not
    named in ``methods`` are recorded as skipped."""
    for name in _registry.available(kind):
        if methods and name not in methods:
            continue
        cls = _registry.get(kind, name)
        if getattr(cls, "experimental", None) and not methods:
            report["skipped"].append({"method": name, "why": f"experimental, run only when named "
                                      f"(--method {name}): {cls.experimental}"})
            log(f"{name:>16}: skipped, experimental, run only when named (--method {name})")
            continue
        params = demo_params(kind, name)
        if params is None:
            report["skipped"].append({"method": name, "why": "needs inputs the demo does not have"})
            log(f"{name:>16}: skipped, needs inputs the demo does not have")
            continue
        yield name, params


def _scan(which: str, model: torch.nn.Module, clean: Any, chosen: dict[str, dict[str, Any]], seed: int,
          report: dict[str, Any], log: Log) -> ScanReport:
    """:func:`~trojanscope.workflows.scan_model` of one demo model with the demo's settings; a
    failing method is recorded (in ``report["skipped"]``) and the others run."""

    def relay(p: dict[str, Any]) -> None:
        if p.get("stage") == "method_done":
            stat = p.get("statistic")
            log(f"{p['method']:>16} on {which:>10}: backdoored={p['backdoored']} target={p.get('target')} "
                f"statistic={stat:.3g} ({p['seconds']:.1f}s)"
                + (" [experimental]" if _registry.get("model_detector", p["method"]).experimental else ""))

    try:
        rep = scan_model(model, clean, list(chosen), params=chosen, seed=seed, keep_going=True,
                         progress=relay, data_info={"name": "digits", "split": "train"})
    except Exception as e:  # the demo reports a failing scan instead of stopping
        for name in chosen:
            report["skipped"].append({"method": name, "model": which, "error": repr(e),
                                      "traceback": traceback.format_exc(limit=3)})
        log(f"scan of {which}: FAILED {e!r}")
        return report_from_results([], model={"name": which})
    for run in rep.methods:
        if run.status == "failed":
            report["skipped"].append({"method": run.method, "model": which, "error": run.error})
            log(f"{run.method} on {which}: FAILED {run.error}")
    if rep.sanity is not None and not rep.sanity.passed:
        report["skipped"].append({"model": which, "why": rep.sanity.reason})
        log(f"{which}: {rep.sanity.reason}")
    log(f"{'verdict':>16} on {which:>10}: {rep.verdict.verdict}"
        + (f", target {rep.verdict.target}" if rep.verdict.target is not None else ""))
    return rep


def run_demo(out_dir: str | Path = "trojanscope-demo", *, seed: int = 0, log: Log | None = None,
             methods: list[str] | None = None) -> dict[str, Any]:
    """Run the demo and write ``out_dir/report.json``; returns the report dict."""
    log = log or (lambda s: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log("training a clean and a backdoored small CNN on 16x16 digits ...")
    z = demo_models(seed)
    test, trigger, target = z["test"], z["trigger"], z["target"]
    clean_ref = z["train"].clean_subset(20, seed=seed)  # what a model scan gets
    clean_60 = z["train"].clean_subset(60, seed=seed)  # input detectors and repairs get more
    models = {"clean": z["clean"], "backdoored": z["backdoored"]}
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "demo": {"dataset": "digits", "size": DEMO_SIZE, "trigger": repr(trigger), "target": target,
                 "poison_rate": 0.1, "seed": seed},
        "models": {k: {"cta": accuracy(m, test),
                       "asr": attack_success_rate(m, test, trigger, target)["asr"]}
                   for k, m in models.items()},
        "model_scans": [], "input_detectors": [], "mitigations": [], "skipped": [],
        "versions": versions(),
    }
    for k, v in report["models"].items():
        log(f"{k}: CTA {v['cta']:.1%}  ASR {v['asr']:.1%}")

    # the model scans go through the front-door workflow, as `trojanscope scan` does: sanity
    # gate, the methods, one combined verdict per model
    chosen = dict(_demo_methods("model_detector", methods, report, log))
    scan_reports = {which: _scan(which, m, clean_ref, chosen, seed, report, log)
                    for which, m in models.items()} if chosen else {}
    report["verdicts"] = {which: r.verdict.to_dict() for which, r in scan_reports.items()}
    for name in chosen:  # method by method, both models, as the demo has always listed them
        for which, rep in scan_reports.items():
            run = next(r for r in rep.methods if r.method == name)
            if run.result is None:
                continue
            d = run.result.to_dict()
            d["model"] = which
            report["model_scans"].append(d)
    scans = {which: rep.results for which, rep in scan_reports.items()}

    x_clean = test.of_classes([target], exclude=True).x
    x_trig = trigger.apply(x_clean)
    for name, params in _demo_methods("input_detector", methods, report, log):
        try:
            det = _registry.get("input_detector", name)(**params)
            t1 = time.perf_counter()
            det.fit(models["backdoored"], clean_60)
            sc, st = det.score(x_clean), det.score(x_trig)
            row = {"method": name, "auc": roc_auc(sc, st), "fpr_clean": float((sc > det.threshold_).float().mean()),
                   "tpr_triggered": float((st > det.threshold_).float().mean()),
                   "threshold": det.threshold_, "seconds": time.perf_counter() - t1,
                   "params": to_jsonable(det.get_params())}
        except Exception as e:
            report["skipped"].append({"method": name, "error": repr(e)})
            log(f"{name}: FAILED {e!r}")
            continue
        report["input_detectors"].append(row)
        log(f"{name:>16}: AUC {row['auc']:.3f}  TPR {row['tpr_triggered']:.1%} at FPR {row['fpr_clean']:.1%}")

    # reuse the demo's Neural Cleanse scan (mitigations would otherwise run it again)
    nc = next((r for r in scans.get("backdoored", []) if r.method == "neural_cleanse" and r.backdoored), None)
    for name, params in _demo_methods("mitigation", methods, report, log):
        try:
            r = repair_model(models["backdoored"], clean_60, name, params=params,
                             scan=nc, test=test, true_trigger=trigger).result
        except Exception as e:
            report["skipped"].append({"method": name, "error": repr(e)})
            log(f"{name}: FAILED {e!r}")
            continue
        report["mitigations"].append(r.to_dict())
        log(f"{name:>16}: CTA {r.cta_before:.1%} -> {r.cta_after:.1%}, ASR(true trigger) "
            f"{r.asr_true_before:.1%} -> {r.asr_true_after:.1%}")

    report["seconds"] = time.perf_counter() - t0
    report = to_jsonable(report)
    write_json(out_dir / "report.json", report)
    # the report shows the reversed trigger stamped on clean images (the model's predictions
    # before/after are computed here, the renderer only draws them)
    bd_scans = scans.get("backdoored", [])
    examples = trigger_examples(models["backdoored"], clean_ref, bd_scans, seed=seed)
    write_html(out_dir / "report.html", "demo: backdoored small_cnn", bd_scans,
               extra_sections={"demo": report}, examples=examples,
               verdict=report["verdicts"].get("backdoored"))
    report["html"] = str(out_dir / "report.html")
    return report
