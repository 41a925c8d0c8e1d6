"""scan-many on a fleet of >= 20 small models with both executors (issue 15).

Trains N small digits models (half clean, half BadNets with targets cycling over the classes),
writes a manifest with the ground truth, then runs ``trojanscope scan-many`` side by side:
- local executor, SIGKILLed after a few models and resumed (checks that nothing is lost or
  scanned twice);
- Ray executor (a local Ray runtime);
and reports models/hour for each, whether the two give the same rows, and the detection counts.

    python bench/fleet.py [--models 20] [--workers 2] [--scan-epochs 20] [--full]

By default each scan is Neural Cleanse with ``--scan-epochs`` epochs on 20 images per class (the
fleet machinery is what is measured); ``--full`` runs the scan command's defaults instead.
Writes bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "cache" / "fleet"
OUT = ROOT / "bench" / "results" / "fleet.json"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(cmd, env=env, text=True, capture_output=True, **kw)


def build_fleet(n: int) -> Path:
    d = CACHE / f"models{n}"
    d.mkdir(parents=True, exist_ok=True)
    rows = ["model,backdoored,target"]
    for i in range(n):
        bd = i % 2 == 1
        name = f"{'bd' if bd else 'clean'}{i:02d}.safetensors"
        target = (i // 2) % 10
        if not (d / name).exists():
            cmd = [sys.executable, "-m", "trojanscope", "train", "--out", str(d / name), "--epochs", "10",
                   "--lr", "0.05", "--seed", str(i)]
            if bd:
                cmd += ["--attack", "badnets", "--target", str(target), "--poison-rate", "0.1"]
            p = run(cmd)
            if p.returncode:
                raise SystemExit(p.stderr)
        rows.append(f"{name},{str(bd).lower()},{target if bd else ''}")
    (d / "manifest.csv").write_text("\n".join(rows) + "\n")
    return d


def rows_of(out: Path) -> dict[str, dict]:
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    return {r["model"]: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scan-epochs", type=int, default=20)
    ap.add_argument("--full", action="store_true", help="the scan command's default methods")
    ap.add_argument("--kill-after", type=int, default=3, help="SIGKILL the local run after this many rows")
    args = ap.parse_args()
    fleet = build_fleet(args.models)
    manifest = fleet / "manifest.csv"
    scan = [] if args.full else ["--method", "neural_cleanse", "--set",
                                 f"neural_cleanse.epochs={args.scan_epochs}"]
    res: dict[str, object] = {}
    outs = {}
    for ex in ("local", "ray"):
        out = CACHE / f"out-{ex}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "trojanscope", "scan-many", str(manifest), "--out", str(out),
               "--executor", ex, "--workers", str(args.workers), *scan]
        t0 = time.perf_counter()
        killed_rows = None
        if ex == "local":
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            while p.poll() is None:
                f = out / "results.jsonl"
                if f.is_file() and len(f.read_text().splitlines()) >= args.kill_after:
                    os.killpg(p.pid, signal.SIGKILL)
                    break
                time.sleep(0.5)
            p.wait()
            killed_rows = rows_of(out)
        done = run(cmd, timeout=4 * 3600)
        wall = time.perf_counter() - t0
        rows = rows_of(out)
        outs[ex] = rows
        ok_resume = None
        if killed_rows is not None:
            ok_resume = all(rows[m] == r for m, r in killed_rows.items()) and len(rows) == args.models
        truth = {m: r for m, r in rows.items()}
        bd = [r for r in truth.values() if r.get("truth")]
        cl = [r for r in truth.values() if r.get("truth") is False]
        res[ex] = {
            "exit_status": done.returncode, "seconds": round(wall, 1), "models": len(rows),
            "models_per_hour": round(3600 * len(rows) / wall, 1),
            "killed_after_rows": None if killed_rows is None else len(killed_rows),
            "resume_lost_nothing": ok_resume,
            "verdicts": {v: sum(r["verdict"] == v for r in rows.values())
                         for v in ("clean", "backdoored", "inconclusive", "error")},
            "backdoored_found_right_target": sum(r["verdict"] == "backdoored" and
                                                 r.get("target") == r.get("true_target") for r in bd),
            "backdoored_models": len(bd),
            "false_alarms": sum(r["verdict"] == "backdoored" for r in cl), "clean_models": len(cl),
        }
        print(ex, res[ex], flush=True)
    keys = ("verdict", "target", "p_value", "error")
    same = outs["local"].keys() == outs["ray"].keys() and all(
        outs["local"][m].get(k) == outs["ray"][m].get(k) for m in outs["local"] for k in keys)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "command": "python bench/fleet.py " + " ".join(sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "2-core machine shared with other work during this run: seconds are noisy"},
        "fleet": f"{args.models} small_cnn models on 8x8 digits, half BadNets (3x3 patch, 10% poison)",
        "scan": "defaults (auto)" if args.full else f"neural_cleanse, {args.scan_epochs} epochs",
        "workers": args.workers, "executors": res, "local_and_ray_rows_equal": same,
    }, indent=2) + "\n")
    print("same rows:", same)


if __name__ == "__main__":
    main()
