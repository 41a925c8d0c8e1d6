"""Everything a scan writes, in one call: ``report.json``, the HTML report, the trigger files.

``trojanscope scan --json/--html/--save-triggers`` (and the demo, the benchmarks) call
:func:`write_scan_outputs` with the :class:`~trojanscope.workflows.ScanReport` of
:func:`~trojanscope.workflows.scan_model`; it prepares the data the HTML needs from the model
(:func:`~.prep.trigger_examples`), then renders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData
from ..errors import InputError
from ..workflows import ScanReport
from .html import write_scan_html
from .json_report import scan_report, write_json
from .prep import trigger_examples
from .triggers import save_triggers


def write_scan_outputs(report: ScanReport, *, model: torch.nn.Module, clean: ImageData | None,
                       json_path: str | Path | None = None, html_path: str | Path | None = None,
                       triggers_dir: str | Path | None = None, title: str | None = None,
                       seed: int = 0) -> dict[str, Any]:
    """Write the scan's JSON report, HTML report and reversed triggers (each when asked for).

    Args:
        report: what :func:`~trojanscope.workflows.scan_model` returned.
        model: the scanned model (evaluated, never modified) and ``clean`` images (None for a
            data-free scan: no trigger examples), for the trigger examples of both reports.
        json_path, html_path, triggers_dir: where to write (None: not written).
        title: the HTML title (default "trojanscope scan: <model file name>").
        seed: seed of the choice of example images.

    Returns:
        The JSON report (also when ``json_path`` is None); with ``triggers_dir``, the files
        written are listed under ``"trigger_files"``.
    """
    v = report.verdict
    examples = None
    if (json_path or html_path) and clean is not None and report.results:
        examples = trigger_examples(model, clean, report.results,
                                    target=v.target if v.verdict == "backdoored" else None, seed=seed)
    d = scan_report(report, examples)
    if triggers_dir is not None:
        with _writing(triggers_dir):
            d["trigger_files"] = [str(p) for p in save_triggers(report.results, triggers_dir)]
    if json_path is not None:
        with _writing(json_path):
            write_json(json_path, d)
    if html_path is not None:
        with _writing(html_path):
            write_scan_html(html_path, report, examples, title=title)
    return d


@contextmanager
def _writing(path: str | Path) -> Iterator[None]:
    """An output that cannot be written (a folder that is a file, no permission, disk full) is
    a clear error, not a traceback."""
    try:
        yield
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
