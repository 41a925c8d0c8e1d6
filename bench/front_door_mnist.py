"""The front door on real MNIST: ``trojanscope scan MODEL`` with no ``--method`` (auto) exits 1
with the right target on a backdoored ``borji_cnn`` and 0 on its clean twin.

Both models are made with ``trojanscope train`` (1 epoch, BadNets 3x3 white patch -> class 1 at
10% poison; the clean twin with the same seed) and cached under ``bench/cache/front_door/``.
Every command is run as a user would, through the CLI, and recorded with its exit status, the
verdict, the per-method p-values and the wall time, in ``bench/results/front_door_mnist.json``.

    python bench/front_door_mnist.py --data-dir ../shared/data [--timeout 3600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import run_cli

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "cache" / "front_door"
RESULT = BENCH / "results" / "front_door_mnist.json"

TRAIN = {
    "backdoored": ["--attack", "badnets", "--target", "1", "--poison-rate", "0.1"],
    "clean": [],
}
EXPECT = {"backdoored": {"exit": 1, "target": 1}, "clean": {"exit": 0, "target": None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("TROJANSCOPE_DATA"))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    ap.add_argument("--only", choices=sorted(TRAIN), default=None)
    args = ap.parse_args()
    if not args.data_dir or not Path(args.data_dir, "mnist").is_dir():
        sys.exit("pass --data-dir DIR holding mnist/ (or set TROJANSCOPE_DATA)")
    CACHE.mkdir(parents=True, exist_ok=True)
    prev = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    runs = prev.get("runs", {})
    for name, extra in TRAIN.items():
        if args.only and name != args.only:
            continue
        model = CACHE / f"mnist_{name}.safetensors"
        rec: dict = {"model": str(model.relative_to(BENCH.parent))}
        if not model.exists():
            rec["train"] = run_cli(["train", "--data", "mnist", "--data-dir", args.data_dir, "--arch", "borji_cnn",
                                 *extra, "--epochs", "1", "--lr", "0.05", "--seed", "0", "--device", "cpu",
                                 "--out", str(model)], args.timeout, env={"OMP_NUM_THREADS": "1"})
        side = json.loads(model.with_suffix(".json").read_text())
        rec["model_cta"] = side["metrics"].get("cta")
        rec["model_asr"] = side["metrics"].get("asr")
        report = CACHE / f"scan_{name}.json"
        rec["scan"] = run_cli(["scan", str(model), "--data-dir", args.data_dir, "--device", "cpu",
                            "--json", str(report)], args.timeout, env={"OMP_NUM_THREADS": "1"})
        if report.exists():
            r = json.loads(report.read_text())
            rec["verdict"] = r["verdict"]
            rec["sanity"] = r.get("sanity")
            rec["methods"] = [{k: m.get(k) for k in ("method", "status", "p_value", "candidate_target", "why")}
                              for m in r.get("methods", [])]
            rec["timings"] = r.get("timings")
        rec["expected"] = EXPECT[name]
        rec["as_expected"] = (rec["scan"]["exit"] == EXPECT[name]["exit"]
                              and rec.get("verdict", {}).get("target") == EXPECT[name]["target"])
        runs[name] = rec
        print(f"{name}: exit {rec['scan']['exit']} ({rec['scan']['seconds']}s), "
              f"verdict {rec.get('verdict', {}).get('verdict')}, target {rec.get('verdict', {}).get('target')}")
    from trojanscope.utils import atomic_write_json, versions

    # two runs (--only backdoored / --only clean) may go in parallel: merge with what is there now
    now = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    runs = {**now.get("runs", {}), **{k: v for k, v in runs.items() if not args.only or k == args.only}}
    atomic_write_json(RESULT, {
        "benchmark": "front_door_mnist",
        "command": "python bench/front_door_mnist.py --data-dir DATA [--only backdoored|clean]",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(), "cpu_threads": 1, "runs": runs,
        "all_as_expected": all(r.get("as_expected") for r in runs.values()) and len(runs) == len(TRAIN),
    })
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
