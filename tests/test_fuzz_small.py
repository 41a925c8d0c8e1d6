"""A small seeded fuzz run (issue 12): 100 mutated files of every format through the loaders in a
worker process; none may end in a traceback, a hang or a crash. ``bench/fuzz.py`` runs >= 2000."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("trojanscope_bench_fuzz", BENCH / "fuzz.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_small_fuzz_has_no_traceback_hang_or_crash(tmp_path):
    fuzz = _fuzz_module()
    summary = fuzz.fuzz(100, seed=7, work=tmp_path, time_limit=240, case_timeout=60, memory_gb=4.0)
    assert summary["cases"] >= 50, summary  # bounded in time on a busy machine
    out = summary["outcomes"]
    assert out["traceback"] == out["hang"] == out["crash"] == 0, summary["problems"]
    assert out["refused"] > 0 and out["loaded"] > 0  # mutations both break files and leave some loadable
    # resumable: a second call finds every case done and runs none
    again = fuzz.fuzz(summary["cases"], seed=7, work=tmp_path, time_limit=240, case_timeout=60, memory_gb=4.0)
    assert again["resumed_cases"] == summary["cases"] and again["outcomes"] == out
