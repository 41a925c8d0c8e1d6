"""What the isolated worker costs: the same ``trojanscope evaluate`` with and without isolation.

Two measurements:

- **start-up of one isolated call** (in this process): ``run_isolated`` of a function that returns
  at once, by fork (what the CLI uses) and by spawn (a fresh interpreter importing torch);
- **end to end**: ``python -m trojanscope evaluate MODEL`` as a user runs it, alternately isolated
  (the default) and in-process (``TROJANSCOPE_NO_SANDBOX=1``), ``--repeats`` times each on the
  embedded digits (and on the MNIST test split with ``--mnist``); the overhead is the median of
  the paired differences, in wall-clock time and in CPU time (user + system of the command and
  its worker; much less sensitive to other load). The load average is recorded: on a shared
  machine the wall-clock numbers are noisy.

    nice -n 10 python bench/sandbox_overhead.py [--quick] [--repeats N] [--mnist]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import data_root, parser, write_result

from trojanscope.models import create_model, save_model
from trojanscope.sandbox import run_isolated

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _noop() -> int:
    return 0


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def startup(n_fork: int, n_spawn: int) -> dict:
    fork = []
    for _ in range(n_fork):
        t = time.perf_counter()
        run_isolated(_noop, {}, timeout=60)
        fork.append(time.perf_counter() - t)
    spawn = []
    for _ in range(n_spawn):
        t = time.perf_counter()
        run_isolated(os.getpid, {}, timeout=120, start="spawn")
        spawn.append(time.perf_counter() - t)
    return {"fork_s": {"median": statistics.median(fork), "max": max(fork), "n": n_fork},
            "spawn_s": {"median": statistics.median(spawn), "max": max(spawn), "n": n_spawn} if spawn else None}


def cli_pairs(model: Path, data: list[str], repeats: int, data_dir: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if data_dir:
        env["TROJANSCOPE_DATA"] = data_dir
    cmd = [sys.executable, "-m", "trojanscope", "evaluate", str(model), *data, "--device", "cpu"]
    runs: dict[str, list[float]] = {"isolated": [], "in_process": []}
    cpu: dict[str, list[float]] = {"isolated": [], "in_process": []}
    for i in range(repeats):
        order = ("isolated", "in_process") if i % 2 == 0 else ("in_process", "isolated")
        for mode in order:
            e = dict(env, TROJANSCOPE_NO_SANDBOX="1" if mode == "in_process" else "0")
            t, c = time.perf_counter(), _children_cpu()
            r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
            runs[mode].append(time.perf_counter() - t)
            cpu[mode].append(_children_cpu() - c)  # the command and its (reaped) worker
            if r.returncode != 0:
                raise SystemExit(f"{mode} run failed: {r.stderr}")
    diffs = [a - b for a, b in zip(runs["isolated"], runs["in_process"], strict=True)]
    cpu_diffs = [a - b for a, b in zip(cpu["isolated"], cpu["in_process"], strict=True)]
    return {"command": " ".join(cmd[1:]), "seconds": runs, "cpu_seconds": cpu,
            "cpu_overhead_s_median_of_pairs": statistics.median(cpu_diffs),
            "median_cpu_isolated_s": statistics.median(cpu["isolated"]),
            "median_cpu_in_process_s": statistics.median(cpu["in_process"]),
            "median_isolated_s": statistics.median(runs["isolated"]),
            "median_in_process_s": statistics.median(runs["in_process"]),
            "overhead_s_median_of_pairs": statistics.median(diffs), "overhead_s_pairs": diffs}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="runs of each mode (alternating)")
    p.add_argument("--mnist", action="store_true", help="also evaluate on the 10,000 MNIST test images")
    a = p.parse_args()
    torch.set_num_threads(a.threads or 1)
    repeats = 2 if a.quick else a.repeats
    load0 = os.getloadavg()[0]
    res: dict = {"startup": startup(5 if a.quick else 20, 1 if a.quick else 3)}
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(a.seed)
        digits = Path(d) / "small_cnn_digits.safetensors"
        save_model(create_model("small_cnn", 10, (1, 8, 8)), digits)
        res["evaluate_digits"] = cli_pairs(digits, ["--data", "digits"], repeats, None)
        if a.mnist:
            root = str(data_root(a.data_dir))
            mnist = Path(d) / "small_cnn_mnist.safetensors"
            save_model(create_model("small_cnn", 10, (1, 28, 28)), mnist)
            res["evaluate_mnist"] = cli_pairs(mnist, ["--data", "mnist"], repeats, root)
    res["loadavg_1m_before_after"] = [load0, os.getloadavg()[0]]
    res["cpu_count"] = os.cpu_count()
    res["quick"] = a.quick
    print(write_result("sandbox_overhead" + ("_quick" if a.quick else ""), res))


if __name__ == "__main__":
    main()
