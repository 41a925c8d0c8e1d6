"""Scan speed on an MNIST ``borji_cnn``: batched Neural Cleanse vs its per-label loop; L-RED steps.

Neural Cleanse (Wang et al. 2019) optimises one mask/pattern per label. trojanscope optimises all
labels in one batched tensor program (a [K*B] batch per Adam step); ``per_label_loop=True`` runs
the same program one label at a time. Both run with identical settings on the BadNets model of
``bench/nc_mnist.py``; the benchmark records seconds per scan, the ratio loop / batched, the
per-image gradient evaluations of each, and whether the verdicts agree. For L-RED it records
``bench/_lred_speed.py:lred_speed`` (fixed delta vs adaptive step: seconds and gradient
evaluations), written by the L-RED engineer, or that it is missing.

It also measures the ceiling of any batched-vs-loop speed-up at equal work on this hardware: the
time per image of one forward + input-gradient pass of the model at the per-label batch (B) and at
the batched program's batch (K * B). Both programs evaluate the same number of images, so the
ratio of those two costs bounds what batching alone can gain.

    python bench/scan_speed.py [--data-dir DIR] [--quick] [--threads N] [--fresh] [--rerun-lred]
"""

from __future__ import annotations

import importlib
import json
import time
import traceback

import torch
from _common import RESULTS, load_mnist, mnist_clean_model, parser, write_result
from nc_mnist import TARGET, badnets_model

from trojanscope.detectors.model.neural_cleanse import NeuralCleanse
from trojanscope.utils import to_jsonable

_PREVIOUS: dict = {}  # entries of an earlier run of this benchmark, reused when their params match


def nc_run(model, clean, per_label_loop: bool, key: str = "", **kw) -> dict:
    det = NeuralCleanse(**kw, per_label_loop=per_label_loop)
    old = _PREVIOUS.get(key)
    if key and isinstance(old, dict) and old.get("params") == to_jsonable(det.get_params()):
        return dict(old, reused_from_previous_run=True)  # resume: this exact run is already done
    t0, c0 = time.perf_counter(), time.process_time()
    r = det.scan(model, clean)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = det.steps_per_epoch
    n_img = sum(r.extra["epochs_run"]) * steps * det.batch_size
    return {"per_label_loop": per_label_loop, "seconds": r.seconds, "wall_seconds": wall, "cpu_seconds": cpu,
            "backdoored": r.backdoored, "target": r.target, "anomaly_index": r.statistic,
            "mask_l1": r.per_class["mask_l1"], "epochs_run": r.extra["epochs_run"],
            "image_gradient_evaluations": n_img, "params": det.get_params()}


def batching_ceiling(model, x: torch.Tensor, batch: int, k: int, seconds: float = 3.0) -> dict:
    """Seconds per image of forward + input gradient at batch ``batch`` and ``k * batch``."""
    from trojanscope.detectors.model._base import frozen

    def per_image(n: int) -> float:
        xb = x[torch.arange(n) % len(x)].clone().requires_grad_()
        run = lambda: torch.autograd.grad(model(xb).logsumexp(1).sum(), xb)  # noqa: E731
        for _ in range(3):
            run()
        t0, done = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            run()
            done += n
        return (time.perf_counter() - t0) / done

    with frozen(model):
        small, large = per_image(batch), per_image(k * batch)
    return {"batch": batch, "batched_batch": k * batch, "seconds_per_image_at_batch": small,
            "seconds_per_image_at_batched_batch": large, "ceiling": small / large,
            "note": "both programs evaluate the same images; batching can only gain what the model's "
                    "per-image cost drops from batch B to K*B"}


def lred_run(model, test, args) -> dict:
    """``bench/_lred_speed.py:lred_speed`` (the L-RED engineer's), or why it is not there."""
    if "lred" in _PREVIOUS:
        return dict(_PREVIOUS["lred"], reused_from_previous_run=True)
    try:
        mod = importlib.import_module("_lred_speed")
    except ImportError:
        return {"missing": "bench/_lred_speed.py (lred_speed) not found"}
    try:
        t0 = time.perf_counter()
        # the fixed step on all ten targets takes hours: the true target only
        kw = dict(fixed_targets=[TARGET], seed=args.seed, fixed_delta=args.lred_fixed_delta)
        if args.quick:
            kw.update(tau_max=5000)
        out = mod.lred_speed(model, test, **kw)
        out["wall_seconds"] = time.perf_counter() - t0
        return out
    except Exception as e:  # record the failure, keep the NC numbers
        return {"error": repr(e), "traceback": traceback.format_exc(limit=4)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--nc-epochs", type=int, default=None, help="Neural Cleanse epochs (both modes)")
    p.add_argument("--skip-lred", action="store_true")
    p.add_argument("--lred-fixed-delta", type=float, default=1e-4, help="L-RED fixed step (paper: 1e-4)")
    p.add_argument("--skip-digits", action="store_true", help="skip the 16x16 digits comparison")
    p.add_argument("--fresh", action="store_true", help="re-measure Neural Cleanse instead of reusing the last run")
    p.add_argument("--rerun-lred", action="store_true", help="re-measure L-RED instead of reusing the last run")
    args = p.parse_args()
    threads = args.threads or 1
    torch.set_num_threads(threads)
    name = "scan_speed" + ("_quick" if args.quick else "") + (f"_threads{threads}" if threads != 1 else "")
    prev_path = RESULTS / f"{name}.json"
    if prev_path.is_file():
        prev = json.loads(prev_path.read_text())
        if not args.fresh:
            _PREVIOUS.update({f"nc.{k}": v for k, v in prev.get("neural_cleanse", {}).items() if isinstance(v, dict)})
            _PREVIOUS.update({f"digits.{k}": v for k, v in prev.get("neural_cleanse_digits", {}).items()
                              if isinstance(v, dict)})
        if "model" in prev.get("lred", {}) and not args.rerun_lred:
            _PREVIOUS["lred"] = prev["lred"]
    model, info = badnets_model(args.data_dir, args.seed, args.quick)
    test = load_mnist("test", args.data_dir)
    n_per_class = 10 if args.quick else 20
    clean = test.clean_subset(n_per_class, seed=args.seed)
    # the detector's default budget: up to 100 epochs, early stopping per label (30 epochs left the
    # masks unconverged: the clean model was flagged, class 2, anomaly index 2.6)
    epochs = args.nc_epochs or (8 if args.quick else 100)
    warmup = 10 if epochs >= 30 else max(2, epochs // 3)
    # identical settings per candidate in both modes: steps per epoch and batch size
    kw = dict(epochs=epochs, steps_per_epoch=6, batch_size=32, seed=args.seed)
    batched = nc_run(model, clean, False, "nc.batched", **kw)
    print(f"neural_cleanse batched: {batched['seconds']:.1f} s ({batched['cpu_seconds']:.1f} s CPU), "
          f"target {batched['target']}")
    loop = nc_run(model, clean, True, "nc.per_label_loop", **kw)
    print(f"neural_cleanse per-label loop: {loop['seconds']:.1f} s ({loop['cpu_seconds']:.1f} s CPU), "
          f"target {loop['target']}")
    # the paper's speed-up (Sec. VI-C) only exists in the batched program: it needs every
    # label's current norm at once to keep the top k
    fast = nc_run(model, clean, False, "nc.batched_fast_top5", **kw, fast_top_k=5, fast_warmup=warmup)
    print(f"neural_cleanse batched + fast top-5: {fast['seconds']:.1f} s, target {fast['target']}")
    # and on the clean twin: do the batched program and the fast mode stay quiet there?
    clean_model, _ = mnist_clean_model(args.data_dir, seed=args.seed)
    batched_clean = nc_run(clean_model, clean, False, "nc.batched_clean_model", **kw)
    print(f"batched on the clean model: backdoored={batched_clean['backdoored']}")
    fast_clean = nc_run(clean_model, clean, False, "nc.batched_fast_top5_clean_model", **kw, fast_top_k=5,
                        fast_warmup=warmup)
    print(f"fast top-5 on the clean model: backdoored={fast_clean['backdoored']}")
    verdict = lambda r: (r["backdoored"], r["target"])  # noqa: E731
    nc = {"batched": batched, "per_label_loop": loop, "batched_fast_top5": fast,
          "batched_clean_model": batched_clean, "batched_fast_top5_clean_model": fast_clean,
          # CPU seconds of this process: the wall time on a shared machine swings with other load
          "speedup_loop_over_batched": loop["cpu_seconds"] / batched["cpu_seconds"],
          "speedup_loop_over_batched_fast": loop["cpu_seconds"] / fast["cpu_seconds"],
          "speedup_wall": loop["seconds"] / batched["seconds"],
          "equal_verdicts": verdict(batched) == verdict(loop),
          "equal_verdicts_fast": verdict(fast) == verdict(loop),
          "goal": ">= 5x faster at equal verdicts",
          "goal_met": loop["seconds"] / batched["seconds"] >= 5 and verdict(batched) == verdict(loop),
          "batching_ceiling": batching_ceiling(model, clean.x, kw["batch_size"], 10),
          "note": "on a CPU the model's cost per image is nearly the same at batch 32 and 320 "
                  "(batching_ceiling), and both programs evaluate the same images, so batching alone "
                  "cannot cut the arithmetic; the gain needs parallel hardware (a GPU) or less work "
                  "(fast top-k)"}

    doc = {"model": {k: info.get(k) for k in ("name", "arch", "cta", "asr", "attack")},
           "n_clean_per_class": n_per_class, "neural_cleanse": nc}
    paths = []

    def save(**part) -> None:  # after every stage: a cut-off run keeps what it measured
        doc.update(part)
        paths[:] = [write_result(name, doc)]

    save()
    digits = {}
    if not args.skip_digits:  # a tiny model where per-step overhead, not arithmetic, dominates
        from trojanscope.demo import demo_instance, demo_models

        z = demo_models(seed=args.seed)
        few = z["train"].clean_subset(20, seed=args.seed)
        dkw = demo_instance("model_detector", "neural_cleanse").get_params()
        dkw.pop("per_label_loop")
        db = nc_run(z["backdoored"], few, False, "digits.batched", **dkw)
        dl = nc_run(z["backdoored"], few, True, "digits.per_label_loop", **dkw)
        digits = {"model": "16x16 digits small_cnn (the demo's), target 0", "batched": db, "per_label_loop": dl,
                  "speedup_loop_over_batched": dl["cpu_seconds"] / db["cpu_seconds"],
                  "speedup_wall": dl["seconds"] / db["seconds"],
                  "equal_verdicts": (db["backdoored"], db["target"]) == (dl["backdoored"], dl["target"])}
        print(f"digits small_cnn: batched {db['seconds']:.1f} s, loop {dl['seconds']:.1f} s")
    save(neural_cleanse_digits=digits)

    save(lred={"pending": "running"} if not args.skip_lred else {"skipped": "--skip-lred"})
    if not args.skip_lred:
        save(lred=lred_run(model, test, args))
    print(f"speed-up of the batched program: {nc['speedup_loop_over_batched']:.1f}x "
          f"(with fast top-5: {nc['speedup_loop_over_batched_fast']:.1f}x); equal verdicts: "
          f"{nc['equal_verdicts']} / {nc['equal_verdicts_fast']}; wrote {paths[0]}")


if __name__ == "__main__":
    main()
