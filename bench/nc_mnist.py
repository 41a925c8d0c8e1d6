"""Neural Cleanse on real MNIST: a BadNets model (5x5 white square -> class 1) and a clean model.

Wang et al., S&P 2019, Sec. V (MNIST, BadNets, Table II; Fig. 3 anomaly index > 2 for infected
models, < 2 for clean ones). The backdoored ``borji_cnn`` is trained for one epoch on MNIST with
10% of the training set (all source classes) stamped with a 5x5 white square at the bottom
right and relabelled 1 (the paper poisons ~10%); the clean model is the shared
``mnist_clean_model``. Both are scanned with the paper's defaults (Adam lr 0.1, init cost 1e-3,
patience 5, multipliers 1.5 / 1.5**1.5, success threshold 0.99, early stop) on 20 clean test
images per class.

Claims checked: the BadNets model is flagged (anomaly index > 2) with target 1; the clean model
is not flagged.

    python bench/nc_mnist.py [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import torch
from _common import cached_model, load_mnist, mnist_clean_model, parser, write_result

from trojanscope.attacks import PatchTrigger, PoisoningAttack
from trojanscope.metrics import accuracy, attack_success_rate
from trojanscope.models import create_model
from trojanscope.train import train

TARGET, RATE, SIZE = 1, 0.1, 5
MODEL_NAME = "mnist_badnets5_br_t1_r10"


def badnets_trigger() -> PatchTrigger:
    return PatchTrigger(size=SIZE, pattern="white", location="bottom_right", margin=1)


def badnets_model(root=None, seed: int = 0, quick: bool = False) -> tuple[torch.nn.Module, dict]:
    """The BadNets ``borji_cnn`` (cached as ``bench/cache/mnist_badnets5_br_t1_r10[_quick]``)."""
    trigger = badnets_trigger()

    def build():
        tr, te = load_mnist("train", root), load_mnist("test", root)
        if quick:
            tr = tr.clean_subset(1000, seed=seed)
        attack = PoisoningAttack(trigger=trigger, target=TARGET, rate=RATE, seed=seed)
        poisoned, idx = attack.poison_data(tr)
        torch.manual_seed(seed)
        m = create_model("borji_cnn", 10, (1, 28, 28))
        hist = train(m, poisoned, epochs=1, lr=0.05, batch_size=64, seed=seed)
        return m, {"arch": "borji_cnn", "num_classes": 10, "in_shape": [1, 28, 28], "epochs": 1,
                   "lr": 0.05, "seed": seed, "cta": accuracy(m, te),
                   "asr": attack_success_rate(m, te, trigger, TARGET)["asr"],
                   "train_seconds": hist["seconds"],
                   "attack": {"trigger": repr(trigger), "target": TARGET, "rate": RATE,
                              "poisoned": len(idx), "train_size": len(tr)}}

    return cached_model(MODEL_NAME + ("_quick" if quick else ""), build)


def summary(r) -> dict:
    return {"backdoored": r.backdoored, "target": r.target, "anomaly_index": r.statistic,
            "candidate_target": r.extra["candidate_target"], "mask_l1": r.per_class["mask_l1"],
            "anomaly_index_per_class": r.per_class["anomaly_index"],
            "reached_threshold": r.extra["reached_threshold"], "epochs_run": r.extra["epochs_run"],
            "seconds": r.seconds}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads or 1)
    from trojanscope.detectors.model.neural_cleanse import NeuralCleanse
    from trojanscope.report.figures import trigger_figures

    bd, bd_info = badnets_model(args.data_dir, args.seed, args.quick)
    cl, cl_info = mnist_clean_model(args.data_dir, seed=args.seed)
    test = load_mnist("test", args.data_dir)
    n_per_class = 10 if args.quick else 20
    clean = test.clean_subset(n_per_class, seed=args.seed)
    kw = dict(epochs=30) if args.quick else {}
    det = NeuralCleanse(**kw, seed=args.seed)
    res = {"backdoored": det.scan(bd, clean), "clean": det.scan(cl, clean)}
    name = "nc_mnist" + ("_quick" if args.quick else "")
    png = trigger_figures(res["backdoored"])[0][1]
    (write_result(name, {}).parent / f"{name}_triggers.png").write_bytes(png)
    ok = (res["backdoored"].backdoored and res["backdoored"].target == TARGET
          and res["backdoored"].statistic > 2 and not res["clean"].backdoored)
    path = write_result(name, {
        "paper": "Wang et al., Neural Cleanse, S&P 2019 (MNIST BadNets)",
        "claims_hold": ok,
        "n_clean_per_class": n_per_class, "clean_split": "test",
        "detector_params": det.get_params(),
        "models": {"backdoored": {k: bd_info.get(k) for k in ("name", "cta", "asr", "attack", "cached")},
                   "clean": {k: cl_info.get(k) for k in ("name", "cta", "cached")}},
        "scans": {k: summary(r) for k, r in res.items()},
        "triggers_png": f"{name}_triggers.png",
    })
    for k, r in res.items():
        print(f"{k:>10}: backdoored={r.backdoored} target={r.target} anomaly index={r.statistic:.2f} "
              f"({r.seconds:.0f} s)")
    print(f"claims hold: {ok}; wrote {path}")


if __name__ == "__main__":
    main()
