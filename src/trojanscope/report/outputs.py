"""Everything a scan writes, in one call: ``report.json``, the HTML report, the trigger files.

The CLI (``trojanscope scan --json/--html/--save-triggers``), the demo and the benchmarks call
:func:`write_scan_outputs`; it prepares the data the HTML needs from the model
(:func:`~.prep.trigger_examples`), then renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData
from ..types import ScanResult
from .explain import fallback_verdict
from .html import write_html
from .json_report import scan_report, write_json
from .prep import trigger_examples
from .triggers import save_triggers


def write_scan_outputs(results: Sequence[ScanResult], *, model: torch.nn.Module, clean: ImageData,
                       model_info: Mapping[str, Any], data: Mapping[str, Any] | None = None,
                       verdict: Mapping[str, Any] | None = None, parameters: Mapping[str, Any] | None = None,
                       json_path: str | Path | None = None, html_path: str | Path | None = None,
                       triggers_dir: str | Path | None = None, title: str | None = None,
                       seed: int = 0, **extra: Any) -> dict[str, Any]:
    """Write the scan's JSON report, HTML report and reversed triggers (each when asked for).

    Args:
        results: one ScanResult per method.
        model: the scanned model (evaluated, never modified) and ``clean`` images, for the
            trigger examples of the HTML and JSON reports.
        model_info: ``{"path": ..., ...}`` of the model.
        data: what the model was scanned with (dataset, split, n_clean, ...).
        verdict: the combined verdict; default :func:`~.explain.fallback_verdict`.
        parameters: the run's parameters.
        json_path, html_path, triggers_dir: where to write (None: not written).
        title: the HTML title (default "trojanscope scan: <model file name>").
        seed: seed of the choice of example images.
        extra: more top-level keys of the JSON report.

    Returns:
        The JSON report (a dict, also returned when ``json_path`` is None), with the written
        trigger files under ``"trigger_files"`` when ``triggers_dir`` is given.
    """
    v = dict(verdict) if verdict is not None else fallback_verdict(results)
    target = v.get("target") if v.get("verdict") == "backdoored" else None
    examples = trigger_examples(model, clean, results, target=target, seed=seed) if (json_path or html_path) else None
    report = scan_report(model_info, results, verdict=v, data=data, trigger_effect=examples,
                         parameters=parameters, **extra)
    if triggers_dir is not None:
        report["trigger_files"] = [str(p) for p in save_triggers(results, triggers_dir)]
    if json_path is not None:
        write_json(json_path, report)
    if html_path is not None:
        name = Path(str(model_info.get("path", "model"))).name
        write_html(html_path, title or f"trojanscope scan: {name}", results, verdict=v, examples=examples,
                   envelope={k: report[k] for k in ("model", "data", "parameters", "versions") if report.get(k)})
    return report
