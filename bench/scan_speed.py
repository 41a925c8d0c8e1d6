"""Front-door scan speed: seconds and gradient work to a verdict, old defaults vs new, side by side.

Issue 16's goal: the default front-door scan (``trojanscope scan MODEL``: the sanity gate, then
every automatic detector -- Neural Cleanse, L-RED and MM-BD -- and one combined verdict) of a
CIFAR-10 ``vgg_small`` in <= 120 s and of an MNIST ``borji_cnn`` in <= 15 s on 2 CPU cores, with
<= 1/5 of the old defaults' image-gradient work and the same verdicts on every model.

Per model, in one run, each configuration goes through :func:`trojanscope.scan_model` exactly as
the CLI calls it (20 clean training images per class, seed 0, the sanity gate on):

- ``v0.1``: the defaults of trojanscope 0.1 (pinned here as parameters);
- ``new``: today's defaults (no parameters; the weights in channels-last memory on a CPU);
- ``new_contiguous``: today's defaults in the old contiguous layout (the same work as ``new``:
  what the layout alone buys);
- ``reference`` (``--reference``, MNIST only by default): Neural Cleanse's per-label loop with the
  paper's schedule (Wang et al. 2019) and the v0.1 L-RED / MM-BD settings.

Work is counted by the detectors themselves (``extra["work"]``: images pushed through the model
with autograd on), so it does not depend on the machine; seconds do, and the JSON records the
load average around each run. Models are trained once with ``trojanscope train`` (the commands
are in the JSON) and cached under ``bench/cache/scan_speed/``.

    python bench/scan_speed.py --data-dir DATA [--models a,b] [--configs v0.1,new_contiguous,new] [--reference]
                               [--threads 2] [--fresh] [--table]
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import BENCH, RESULTS, data_root, parser, write_result

CACHE = BENCH / "cache" / "scan_speed"
NAME = "scan_speed"

# each model: the `trojanscope train` arguments and the expected verdict (target or None)
MODELS: dict[str, dict[str, Any]] = {
    "mnist_borji_backdoored": {
        "train": ["--data", "mnist", "--arch", "borji_cnn", "--attack", "badnets", "--target", "1",
                  "--poison-rate", "0.1", "--epochs", "1", "--lr", "0.05"], "target": 1},
    "mnist_borji_clean": {"train": ["--data", "mnist", "--arch", "borji_cnn", "--epochs", "1", "--lr", "0.05"],
                          "target": None},
    "cifar10_vgg_small_backdoored": {
        "train": ["--data", "cifar10", "--arch", "vgg_small", "--attack", "badnets", "--target", "3",
                  "--poison-rate", "0.1", "--epochs", "6", "--lr", "0.05", "--schedule", "cosine", "--flip"],
        "target": 3},
    "cifar10_vgg_small_clean": {
        "train": ["--data", "cifar10", "--arch", "vgg_small", "--epochs", "6", "--lr", "0.05",
                  "--schedule", "cosine", "--flip"], "target": None},
    "cifar10_wrn16_1_backdoored": {
        "train": ["--data", "cifar10", "--arch", "wrn16_1", "--attack", "blend", "--target", "5",
                  "--poison-rate", "0.1", "--epochs", "4", "--lr", "0.05", "--schedule", "cosine", "--flip"],
        "target": 5},
}

# trojanscope 0.1's defaults, pinned: what a user got before issue 16
V01: dict[str, dict[str, Any]] = {
    "neural_cleanse": {"epochs": 100, "steps_per_epoch": None, "batch_size": 32, "init_cost": 1e-3,
                       "patience": 5, "early_stop_patience": None},
    "lred": {"rel_step": 0.1, "tol": 1e-3, "free_step": None},
    "mm_bd": {"restarts": 30, "steps": 300, "keep": None},
}
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "v0.1": V01,
    "new": {},
    "new_contiguous": {},
    "reference": {**V01, "neural_cleanse": {**V01["neural_cleanse"], "per_label_loop": True}},
}
# memory layout of the weights during each configuration's scan: trojanscope 0.1 and the reference
# ran contiguous; "new" is today's default (channels-last for a CNN on a CPU); "new_contiguous"
# isolates the layout's share of the speed-up (the same work as "new", the old layout)
LAYOUT = {"v0.1": "contiguous", "reference": "contiguous", "new_contiguous": "contiguous", "new": "auto"}
N_PER_CLASS = 20  # the CLI's default --n-per-class


def _train(name: str, data_dir: Path, timeout: float) -> tuple[Path, dict[str, Any]]:
    path = CACHE / f"{name}.safetensors"
    cmd = [sys.executable, "-m", "trojanscope", "train", *MODELS[name]["train"], "--seed", "0",
           "--device", "cpu", "--data-dir", str(data_dir), "--out", str(path)]
    rec: dict[str, Any] = {"command": "trojanscope " + shlex.join(cmd[3:-2] + ["--out", path.name])}
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "OMP_NUM_THREADS": "2"})
        rec["train_seconds"] = round(time.perf_counter() - t0, 1)
        if p.returncode != 0:
            raise SystemExit(f"training {name} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    side = json.loads(path.with_suffix(".json").read_text())
    rec.update({k: side.get("metrics", {}).get(k) for k in ("cta", "asr")})
    return path, rec


def _scan(path: Path, few: Any, params: dict[str, dict[str, Any]], layout: str) -> dict[str, Any]:
    from trojanscope.models import load_model
    from trojanscope.workflows import scan_model

    model = load_model(path, device="cpu")  # fresh for every configuration
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rep = scan_model(model, few, "auto", params=params, seed=0, layout=layout)
    wall = time.perf_counter() - t0
    methods = {}
    for m in rep.methods:
        r = m.result
        if r is None:
            continue
        methods[m.method] = {"seconds": round(r.seconds, 2), "says": "backdoored" if r.backdoored else "clean",
                             "candidate_target": m.candidate_target, "p_value": m.p_value,
                             "statistic": r.statistic, "statistic_key": r.statistic_key,
                             "images_with_gradient": r.extra.get("work", {}).get("images_with_gradient"),
                             "params": r.params}
    v = rep.verdict
    return {"seconds": round(wall, 2), "threads": torch.get_num_threads(), "layout": rep.parameters["layout"],
            "verdict": v.verdict, "target": v.target, "p_value": v.p_value,
            "exit_code": rep.exit_code, "methods": methods,
            "images_with_gradient": sum(m["images_with_gradient"] or 0 for m in methods.values()),
            "loadavg_1m_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def kernels(seconds: float = 3.0) -> dict[str, Any]:
    """Execution levers on this CPU, side by side: seconds per image of one forward + input
    gradient pass (the unit of every scan) at a scan's batch (10 labels x 16 images), for
    float32 (the default), channels-last memory, ``torch.compile`` and bfloat16 autocast."""
    from trojanscope.models import create_model

    out: dict[str, Any] = {}
    for arch, shape in (("borji_cnn", (1, 28, 28)), ("vgg_small", (3, 32, 32)), ("wrn16_1", (3, 32, 32))):
        torch.manual_seed(0)
        net = create_model(arch, 10, shape).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        x0 = torch.rand(160, *shape)

        def per_image(fn, x: torch.Tensor, autocast: bool = False) -> float:
            x = x.clone().requires_grad_()

            def run() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    y = fn(x).float().logsumexp(1).sum()
                torch.autograd.grad(y, x)

            for _ in range(3):
                run()
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                run()
                n += len(x)
            return (time.perf_counter() - t0) / n

        row: dict[str, Any] = {"float32": per_image(net, x0)}
        net_cl = net.to(memory_format=torch.channels_last)
        row["channels_last"] = per_image(net_cl, x0.to(memory_format=torch.channels_last))
        net = net.to(memory_format=torch.contiguous_format)
        try:
            t0 = time.perf_counter()
            comp = torch.compile(net)
            row["compile"] = per_image(comp, x0)
            row["compile_seconds_incl_warmup"] = time.perf_counter() - t0
        except Exception as e:  # no compiler toolchain: record why
            row["compile"] = None
            row["compile_error"] = repr(e)[:300]
        row["bfloat16_autocast"] = per_image(net, x0, autocast=True)
        row["speedup_vs_float32"] = {k: row["float32"] / v for k, v in row.items()
                                     if k in ("channels_last", "compile", "bfloat16_autocast") and v}
        out[arch] = row
    return out


def _kept(prev: dict[str, Any]) -> dict[str, Any]:
    """The previous document's runs whose configuration (parameters and layout) is unchanged."""
    same = {c for c in CONFIGS if prev.get("configs", {}).get(c) == CONFIGS[c]
            and prev.get("layouts", {}).get(c, "contiguous") == LAYOUT[c]}  # before layouts: contiguous
    models = prev.get("models", {})
    for rec in models.values():
        rec["runs"] = {c: r for c, r in rec.get("runs", {}).items() if c in same}
    return models


def table(doc: dict[str, Any]) -> str:
    """The README's speed table (markdown), from a result document."""
    rows = ["| model | config | verdict (target) | seconds | threads, load | image gradients | work vs v0.1 | "
            "seconds vs v0.1 |", "|---|---|---|---:|---|---:|---:|---:|"]
    for name, rec in doc.get("models", {}).items():
        base = rec.get("runs", {}).get("v0.1", {})
        for cfg in ("reference", "v0.1", "new_contiguous", "new"):
            r = rec.get("runs", {}).get(cfg)
            if not r or "verdict" not in r:
                continue
            tgt = "" if r["target"] is None else f" ({r['target']})"
            ratio = (f"{r['images_with_gradient'] / base['images_with_gradient']:.2f}x"
                     if base.get("images_with_gradient") else "")
            sratio = f"{r['seconds'] / base['seconds']:.2f}x" if base.get("seconds") else ""
            load = max(r.get("loadavg_1m_before_after") or [0.0])
            rows.append(f"| {name} | {cfg} | {r['verdict']}{tgt} | {r['seconds']:.0f} | "
                        f"{r.get('threads', '?')}, {load:.1f} | {r['images_with_gradient']:,} | {ratio} | "
                        f"{sratio} |")
    return "\n".join(rows)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    p.add_argument("--configs", default="v0.1,new_contiguous,new",
                   help="comma-separated: reference, v0.1, new_contiguous, new")
    p.add_argument("--reference", action="store_true", help="also the per-label reference on MNIST models")
    p.add_argument("--fresh", action="store_true", help="re-measure runs already in the JSON")
    p.add_argument("--table", action="store_true", help="print the markdown table of the JSON and exit")
    p.add_argument("--kernels", action="store_true", help="also measure channels-last, torch.compile, bfloat16")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per training command")
    args = p.parse_args()
    path = RESULTS / f"{NAME}.json"
    prev = json.loads(path.read_text()) if path.is_file() else {}
    if args.table:
        print(table(prev))
        return
    torch.set_num_threads(args.threads or 2)
    root = data_root(args.data_dir)
    doc: dict[str, Any] = {"goal": {"cifar10_vgg_small_seconds": 120, "mnist_borji_seconds": 15,
                                    "work_ratio_vs_v0.1": 0.2, "same_verdicts": True},
                           "configs": CONFIGS, "layouts": LAYOUT, "n_per_class": N_PER_CLASS,
                           "cpu_count": os.cpu_count(), "models": _kept(prev)}
    if args.kernels:
        doc["kernels"] = {"threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0],
                          "seconds_per_image": kernels()}
        write_result(NAME, doc)
    elif "kernels" in prev:
        doc["kernels"] = prev["kernels"]
    for name in [m for m in args.models.split(",") if m]:
        spec = MODELS[name]
        model_path, info = _train(name, root, args.timeout)
        rec = doc["models"].setdefault(name, {"runs": {}})
        rec.update({"model": info, "expected_target": spec["target"]})
        configs = [c for c in args.configs.split(",") if c]
        if args.reference and name.startswith("mnist") and "reference" not in configs:
            configs.insert(0, "reference")
        from trojanscope.data import load_dataset

        data = spec["train"][spec["train"].index("--data") + 1]
        few = None  # the scan images, read once per model (CIFAR-10 batches are xz-compressed)
        for cfg in configs:
            if cfg in rec["runs"] and not args.fresh:
                continue
            if few is None:
                few = load_dataset(data, "train", root=root).clean_subset(N_PER_CLASS, seed=0)
            r = _scan(model_path, few, CONFIGS[cfg], LAYOUT[cfg])
            r["as_expected"] = (r["target"] == spec["target"]) and (r["verdict"] == ("clean" if spec["target"] is None
                                                                                   else "backdoored"))
            r["run_by"] = {"command": "python " + shlex.join(sys.argv),  # rows of several runs share the JSON
                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            rec["runs"][cfg] = r
            print(f"{name} {cfg}: {r['verdict']} target {r['target']} in {r['seconds']:.1f} s, "
                  f"{r['images_with_gradient']:,} image gradients", flush=True)
            write_result(NAME, doc)  # after every run: a cut-off run keeps what it measured
        runs = rec["runs"]
        if "v0.1" in runs and "new" in runs:
            rec["new_over_v0.1"] = {
                "seconds": runs["new"]["seconds"] / runs["v0.1"]["seconds"],
                "images_with_gradient": runs["new"]["images_with_gradient"] / runs["v0.1"]["images_with_gradient"],
                "same_verdict": (runs["new"]["verdict"], runs["new"]["target"]) == (runs["v0.1"]["verdict"],
                                                                                   runs["v0.1"]["target"])}
        if "new_contiguous" in runs and "new" in runs:
            rec["layout_speedup"] = {
                "seconds_contiguous_over_channels_last": runs["new_contiguous"]["seconds"] / runs["new"]["seconds"],
                "same_verdict": (runs["new"]["verdict"], runs["new"]["target"]) == (
                    runs["new_contiguous"]["verdict"], runs["new_contiguous"]["target"])}
        write_result(NAME, doc)
    print(table(doc))


if __name__ == "__main__":
    main()
