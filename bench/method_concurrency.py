"""Issue 16 lever "process-level parallelism": run the scan's methods side by side, one core each?

On 2 cores the front door runs Neural Cleanse, L-RED and MM-BD one after another with 2 intra-op
threads each. If a small model's kernels did not use the second core well, two methods at once
with one thread each would finish sooner. This measures both on the MNIST benchmark model of
``bench/scan_speed.py`` (clean borji_cnn, 20 training images per class), alternating the two
modes ``--repeat`` times in one run, each in a fresh interpreter. Python threads suffice (torch
kernels release the GIL); every method draws from its own seeded generator.

    python bench/method_concurrency.py [--repeat 2]

Writes bench/results/method_concurrency.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _common import BENCH, data_root, parser, write_result

CHILD = r"""
import json, sys, time, torch
from concurrent.futures import ThreadPoolExecutor
import scipy.stats  # noqa: F401  (its import is not part of any method's time)
import trojanscope
from trojanscope.data import load_dataset
from trojanscope.models import load_model
mode, model, root = sys.argv[1:4]
m = load_model(model)
clean = load_dataset("mnist", "train", root=root).clean_subset(20, seed=0)
names = ["lred", "neural_cleanse", "mm_bd"]  # longest first, so the pool balances
def run(n):
    t = time.perf_counter()
    r = trojanscope.create("model_detector", n).scan(m, clean)
    return {"method": n, "seconds": time.perf_counter() - t, "backdoored": r.backdoored,
            "target": r.target, "p_value": r.p_value}
t0 = time.perf_counter()
if mode == "sequential_2_threads":
    torch.set_num_threads(2)
    out = [run(n) for n in names]
else:
    torch.set_num_threads(1)
    with ThreadPoolExecutor(2) as ex:
        out = list(ex.map(run, names))
print(json.dumps({"mode": mode, "seconds": time.perf_counter() - t0, "methods": out}))
"""


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    model = BENCH / "cache" / "scan_speed" / "mnist_borji_clean.safetensors"
    if not model.is_file():
        sys.exit(f"{model} is missing: run bench/scan_speed.py first (it trains and caches it)")
    root = str(data_root(args.data_dir))
    runs = []
    for _ in range(args.repeat):
        for mode in ("sequential_2_threads", "two_methods_at_once_1_thread_each"):
            p = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), root], capture_output=True,
                               text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(runs[-1]["mode"], round(runs[-1]["seconds"], 2), flush=True)
    by = {m: [r["seconds"] for r in runs if r["mode"] == m] for m in {r["mode"] for r in runs}}
    seq, par = min(by["sequential_2_threads"]), min(by["two_methods_at_once_1_thread_each"])
    same = all(a["backdoored"] == b["backdoored"] and a["target"] == b["target"]
               for r in runs[1:] for a, b in zip(runs[0]["methods"], r["methods"], strict=True))
    write_result("method_concurrency", {
        "model": "bench/cache/scan_speed/mnist_borji_clean (borji_cnn, clean)", "cpu_count": os.cpu_count(),
        "runs": runs, "best_seconds": {"sequential_2_threads": seq, "two_methods_at_once_1_thread_each": par},
        "speedup": seq / par, "same_verdicts": same,
        "machine": "2 cores; the other jobs of the machine were stopped (SIGSTOP) during the run"})
    print(f"speedup {seq / par:.2f}x, same verdicts: {same}")


if __name__ == "__main__":
    main()
