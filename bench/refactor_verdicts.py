"""Issue 14's must-show: the structure refactor changes no verdict on the benchmark models.

Runs Neural Cleanse and L-RED with identical parameters on the MNIST benchmark models of
``bench/scan_speed.py`` (borji_cnn, BadNets -> 1, and its clean twin; 20 training images per
class, seed 0) in two checkouts: this one and one from before the refactor (commit 396643c,
2026-11-22). Each checkout runs in its own interpreter with its own ``src`` first on the path;
the models are rebuilt from their safetensors with ``create_model`` in both, so the comparison does
not depend on the sidecar format. The parameters are today's defaults restricted to what both
versions know (L-RED's ``free_step``, added after the refactor, is off: ``None`` is the old path).

    git worktree add /tmp/before14 396643c
    python bench/refactor_verdicts.py --before /tmp/before14

Writes bench/results/refactor_verdicts.json (per model and method: verdict, target, statistic,
p-value from both checkouts, and whether they agree).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import BENCH, data_root, parser, write_result

MODELS = ("mnist_borji_backdoored", "mnist_borji_clean")
PARAMS = {
    "neural_cleanse": {"epochs": 60, "steps_per_epoch": 2, "batch_size": 16, "init_cost": 1e-2,
                       "patience": 3, "early_stop_patience": 10, "seed": 0},
    "lred": {"rel_step": 0.2, "tol": 1e-2, "seed": 0},
}

CHILD = r"""
import json, sys, torch
from safetensors.torch import load_file
torch.set_num_threads(1)
import trojanscope
from trojanscope.data import load_dataset
from trojanscope.models import create_model
cache, root, models, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
clean = load_dataset("mnist", "train", root=root).clean_subset(20, seed=0)
out = {}
for name in models:
    info = json.load(open(f"{cache}/{name}.json"))
    m = create_model(info["arch"], info["num_classes"], tuple(info["in_shape"]))
    m.load_state_dict(load_file(f"{cache}/{name}.safetensors"))
    m.eval()
    for meth, p in params.items():
        r = trojanscope.create("model_detector", meth, **p).scan(m, clean)
        out[f"{name}/{meth}"] = {"backdoored": bool(r.backdoored), "target": r.target,
                                 "statistic": float(r.statistic), "p_value": r.p_value}
print(json.dumps(out))
"""


def run(src: Path, root: Path, params: dict) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(BENCH / "cache" / "scan_speed"), str(root),
                        json.dumps(list(MODELS)), json.dumps(params)],
                       env={"PYTHONPATH": str(src / "src"), "PATH": "/usr/bin:/bin",
                            "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="checkout of the commit before the refactor")
    args = ap.parse_args()
    root = data_root(args.data_dir)
    now_params = {**PARAMS, "lred": {**PARAMS["lred"], "free_step": None}}
    before = run(Path(args.before), root, PARAMS)
    after = run(BENCH.parent, root, now_params)
    rows = {}
    for k in before:
        b, a = before[k], after[k]
        rows[k] = {"before": b, "after": a,
                   "same_verdict": b["backdoored"] == a["backdoored"] and b["target"] == a["target"],
                   "statistic_rel_diff": abs(a["statistic"] - b["statistic"]) / max(abs(b["statistic"]), 1e-12)}
    same = all(r["same_verdict"] for r in rows.values())
    write_result("refactor_verdicts", {"before_commit": "396643c", "params": PARAMS,
                                       "all_verdicts_equal": same, "runs": rows})
    for k, r in rows.items():
        print(k, r["before"], r["after"], "same" if r["same_verdict"] else "DIFFERENT")


if __name__ == "__main__":
    main()
