"""Mitigation on real MNIST (Neural Cleanse sec. VI, Table IV, Figs. 8, 9, 21).

The BadNets ``borji_cnn`` of bench/nc_mnist.py (5x5 white square, bottom right, 10% poison,
target 1) is scanned once by Neural Cleanse; the filter, pruning and unlearning (with the
reversed trigger, the true trigger and clean images only) then repair it. Reports CTA and ASR
before/after on the MNIST test set, FNR of the filter at FPR 1/5/10%, and a figure of CTA/ASR
vs the pruned fraction. Paper, Table IV MNIST: unlearning with the reversed trigger 97.69% CTA,
0.57% ASR from 98.54% / 99.90%. Goal here: ASR < 5% with a CTA drop <= 2 points.
"""

from __future__ import annotations

import io

import torch
from _common import load_mnist, parser, write_result
from nc_mnist import TARGET, badnets_model, badnets_trigger

from trojanscope import create
from trojanscope.detectors.model.neural_cleanse import NeuralCleanse


def prune_figure(history: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr = [100 * h["fraction"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.plot(fr, [100 * h["cta"] for h in history], "o-", label="clean accuracy")
    ax.plot(fr, [100 * h["asr_true"] for h in history], "s-", label="ASR, true trigger")
    ax.plot(fr, [100 * h["asr_reversed"] for h in history], "^--", label="ASR, reversed trigger")
    ax.set_xlabel("neurons pruned (% of the second-to-last layer)")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.set_title("Neuron pruning, MNIST BadNets (borji_cnn)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n-per-class", type=int, default=200, help="defender's clean training images per class")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    bd, bd_info = badnets_model(args.data_dir, args.seed, args.quick)
    train_d, test = load_mnist("train", args.data_dir), load_mnist("test", args.data_dir)
    if args.quick:
        test = test.clean_subset(100, seed=args.seed)
    clean = train_d.clean_subset(50 if args.quick else args.n_per_class, seed=args.seed)
    det = NeuralCleanse(seed=args.seed, **(dict(epochs=30) if args.quick else {}))
    scan = det.scan(bd, clean.clean_subset(20, seed=args.seed))
    trig = badnets_trigger()
    rows = {}
    configs = [("filter", {}), ("prune", {}), ("prune_last_conv", {"layer": "last_conv"}),
               ("unlearn_reversed", {"trigger_source": "reversed"}), ("unlearn_true", {"trigger_source": "true"}),
               ("unlearn_clean", {"trigger_source": "clean"})]
    for label, kw in configs:
        name = label.split("_")[0]
        r = create("mitigation", name, seed=args.seed, **kw).apply(bd, clean, scan, test=test, true_trigger=trig)
        d = r.to_dict()
        d["cta_drop_points"] = 100 * (r.cta_before - r.cta_after)
        d["goal_met"] = bool(r.asr_true_after is not None and r.asr_true_after < 0.05
                             and d["cta_drop_points"] <= 2)
        rows[label] = d
        print(f"{label:>18}: CTA {r.cta_before:.2%} -> {r.cta_after:.2%}  ASR(true) {r.asr_true_before:.2%} -> "
              f"{r.asr_true_after:.2%}  ASR(reversed) {r.asr_before:.2%} -> {r.asr_after:.2%}  ({r.seconds:.0f} s)")
    name = "mitigation" + ("_quick" if args.quick else "")
    fig = prune_figure(rows["prune"]["history"])
    out = write_result(name, {
        "paper": "Wang et al., Neural Cleanse, S&P 2019, Table IV (MNIST: unlearning 97.69% CTA, 0.57% ASR "
                 "from 98.54% / 99.90%)",
        "model": {k: bd_info.get(k) for k in ("name", "cta", "asr", "attack")},
        "scan": {"backdoored": scan.backdoored, "target": scan.target, "anomaly_index": scan.statistic,
                 "seconds": scan.seconds, "right_target": scan.target == TARGET},
        "defender_clean_images": len(clean), "test_images": len(test),
        "results": rows, "prune_figure": f"{name}_prune.png",
    })
    (out.parent / f"{name}_prune.png").write_bytes(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
