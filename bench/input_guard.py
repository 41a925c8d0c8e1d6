"""Input guards on MNIST: Jin et al., "A unified framework for analyzing and detecting malicious
examples of DNN models", Table 3 (ROC-AUC), Table 4 (ms per input), Figs. 8-11.

Setup of the paper (sec. 4.1): a BadNets model on MNIST, a 4x4 white square one pixel from the
bottom-right corner, 6000 poisoned training images (added to the 60000 clean ones), target class 1;
the model is ``borji_cnn`` (2 conv + 2 FC layers, like the paper's 4-layer LeNet), 2 epochs.
Malicious examples: BEs = triggered test images of other classes that the model sends to class 1;
AEs = untargeted C&W L2 examples of correctly classified test images (paper, sec. 5), and PGD
(Linf 0.3) examples of the same images as a second, far-from-boundary kind of AE. The negatives
are clean test images. Every detector is fitted on clean *training* images (200 per class; 30% of
them held out to set the threshold at 5% FPR), the guard's setting (``trojanscope inputs``).

Detector settings are the paper's Table 2 (MNIST): mutation I (r_mu 1.0, r_delta 0.3) for AEs and
mutation II (1.0, 0.65) for BEs with 100 mutants; activation space with 100 PCA components and
k = 5 over all layers; KDE bandwidth 1.2; LID k = 20; MC dropout 0.75 (Table 5); feature squeezing
(1-bit depth, 2x2 median; Xu et al.) and STRIP (100 blends; Gao et al.) as extra baselines.

    python bench/input_guard.py [--data-dir DIR] [--quick]

Writes bench/results/input_guard[_quick].json and PNG figures next to it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _common import CACHE, RESULTS, cached_model, load_mnist, parser, write_result

from trojanscope import create
from trojanscope.attacks import PatchTrigger, PoisoningAttack
from trojanscope.metrics import accuracy, attack_success_rate, roc_auc, roc_curve
from trojanscope.models import create_model
from trojanscope.train import train
from trojanscope.utils import atomic_path

TARGET, COUNT, SIZE = 1, 6000, 4

# label -> (registry name, params for the AE column, params for the BE column)
DETECTORS: dict[str, tuple[str, dict, dict]] = {
    "MM (mutation)": ("mutation", {"stage": "adversarial"}, {"stage": "backdoor"}),
    "AS (activation space)": ("activation_space", {}, {}),
    "KD (kernel density)": ("kde", {"sigma": 1.2}, {"sigma": 1.2}),
    "LID": ("lid", {"k": 20}, {"k": 20}),
    "LID (logistic, self-made FGSM)": ("lid", {"k": 20, "combine": "logistic"}, {"k": 20, "combine": "logistic"}),
    "BU (MC dropout)": ("uncertainty", {"stage": "adversarial"}, {"stage": "backdoor"}),
    "FS (feature squeezing)": ("squeeze", {}, {}),
    "STRIP": ("strip", {}, {}),
}
PAPER = {  # Table 3 (MNIST) and Table 4 (ms, GPU server)
    "MM (mutation)": {"auc_ae": 0.9759, "auc_be": 0.9266, "ms": 230.1},
    "AS (activation space)": {"auc_ae": 0.9989, "auc_be": 0.9989, "ms": 5.7},
    "KD (kernel density)": {"auc_ae": 0.8549, "auc_be": 0.9999, "ms": 2.7},
    "LID": {"auc_ae": 0.9253, "auc_be": 0.9670, "ms": 1.8},
}


def trigger() -> PatchTrigger:
    return PatchTrigger(size=SIZE, pattern="white", location="bottom_right", margin=1)


def backdoored_model(args) -> tuple[torch.nn.Module, dict]:
    count = 600 if args.quick else COUNT
    attack = PoisoningAttack(trigger=trigger(), target=TARGET, count=count, seed=args.seed)

    def build():
        tr = load_mnist("train", args.data_dir)
        if args.quick:
            tr = tr.clean_subset(1000, seed=args.seed)
        poisoned, idx = attack.poison_data(tr)
        torch.manual_seed(args.seed)
        m = create_model("borji_cnn", 10, (1, 28, 28))
        hist = train(m, poisoned, epochs=2, lr=0.05, batch_size=64, seed=args.seed)
        return m, {"arch": "borji_cnn", "num_classes": 10, "in_shape": [1, 28, 28],
                   "attack": {"trigger": "badnets", "size": SIZE, "pattern": "white",
                              "location": "bottom_right", "margin": 1, "target": TARGET,
                              "count": len(idx), "remove_originals": False, "seed": args.seed},
                   "training": {"epochs": 2, "lr": 0.05, "batch_size": 64, "seconds": hist["seconds"]}}

    return cached_model("mnist_badnets4_br_t1_quick" if args.quick else f"mnist_badnets4_br_t1_{COUNT}", build)


def malicious_sets(model, test, n: int, seed: int, quick: bool) -> dict[str, torch.Tensor]:
    """n clean test images, n successful BEs, n successful C&W AEs."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(test), generator=g)
    clean = test.x[perm[:n]]
    with torch.no_grad():
        pool = test.subset(perm[n:])
        nt = pool.of_classes([TARGET], exclude=True)
        xt = trigger().apply(nt.x[: 3 * n])
        hit = model(xt).argmax(1) == TARGET
        be = xt[hit][:n]
    rx, ry = attacked_images(model, test, n, seed)
    cw = create("evasion", "cw", steps=50 if quick else 100, binary_search_steps=4 if quick else 5)
    xa = cw.run(model, rx, ry)
    with torch.no_grad():
        ok = model(xa).argmax(1) != ry
    ae = xa[ok][:n]
    l2 = (xa[ok] - rx[ok]).flatten(1).norm(dim=1)
    return {"clean": clean, "ae": ae, "be": be, "ae_success": float(ok.float().mean()),
            "ae_l2_mean": float(l2.mean()), "be_hit_rate": float(hit.float().mean()),
            "right_x": rx, "right_y": ry}


def attacked_images(model, test, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1.2 n correctly classified test images (outside the clean set) that the attacks use."""
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    pool = test.subset(perm[n:])
    with torch.no_grad():
        right = pool.subset(torch.nonzero(model(pool.x[: 3 * n]).argmax(1) == pool.y[: 3 * n]).flatten())
    return right.x[: int(1.2 * n)], right.y[: int(1.2 * n)]


def pgd_set(model, sets: dict, n: int, seed: int) -> dict:
    """PGD (Linf eps 0.3, 40 steps of 0.01: Madry et al.'s MNIST setting) on the same images."""
    pgd = create("evasion", "pgd", eps=0.3, steps=40, step_size=0.01, seed=seed)
    xa = pgd.run(model, sets["right_x"], sets["right_y"])
    with torch.no_grad():
        ok = model(xa).argmax(1) != sets["right_y"]
    return {"pgd": xa[ok][:n], "pgd_success": float(ok.float().mean())}


def single_input_ms(det, x: torch.Tensor, k: int) -> float:
    t0 = time.perf_counter()
    for i in range(k):
        det.score(x[i : i + 1])
    return 1000 * (time.perf_counter() - t0) / k


def figures(rows: dict, scores: dict, suffix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    cols = 4
    r = -(-len(names) // cols)
    paths = []
    fig, axes = plt.subplots(r, cols, figsize=(4 * cols, 3.6 * r), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for kind, color in (("ae", "tab:orange"), ("be", "tab:red")):
            s = scores[name][f"setting_{kind}"]
            fpr, tpr, _ = roc_curve(s["clean"], s[kind])
            ax.plot(fpr, tpr, color=color, label=f"{kind.upper()} AUC {rows[name][f'auc_{kind}']:.3f}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("ROC of input detectors on BadNets MNIST (cf. Jin et al. Fig. 11)")
    fig.tight_layout()
    p = RESULTS / f"input_guard_roc{suffix}.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(str(p))

    fig, axes = plt.subplots(r, cols, figsize=(4 * cols, 3.6 * r), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        s = scores[name]["setting_be"]  # one detector setting for all three groups
        allv = np.r_[s["clean"], s["ae"], s["be"]]
        lo, hi = np.percentile(allv, 0.5), np.percentile(allv, 99.5)
        for label, v, color in (("clean", s["clean"], "tab:blue"), ("AE", s["ae"], "tab:orange"),
                                ("BE", s["be"], "tab:red")):
            v = np.sort(np.clip((np.asarray(v) - lo) / max(hi - lo, 1e-12), 0, 1))
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=color, label=label)
        ax.set_title(name + (" (BE stage)" if DETECTORS[name][1] != DETECTORS[name][2] else ""), fontsize=9)
        ax.set_xlabel("normalised score (higher = more suspicious)")
        ax.set_ylabel("cumulative probability")
        ax.legend(loc="lower right", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Score CDFs: clean vs AE vs BE (cf. Jin et al. Figs. 8-10)")
    fig.tight_layout()
    p = RESULTS / f"input_guard_cdf{suffix}.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(str(p))
    return paths


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads or 1)
    t_start = time.perf_counter()
    n = 100 if args.quick else 500
    per_class = 50 if args.quick else 200
    model, info = backdoored_model(args)
    model.eval()
    test = load_mnist("test", args.data_dir)
    train_d = load_mnist("train", args.data_dir)
    cta = accuracy(model, test)
    asr = attack_success_rate(model, test, trigger(), TARGET)["asr"]
    t0 = time.perf_counter()
    # the C&W examples take minutes on a CPU: cached next to the model (bench/cache, gitignored)
    sets_path = CACHE / f"input_guard_sets{'_quick' if args.quick else ''}_seed{args.seed}.pt"
    sets = torch.load(sets_path, weights_only=True) if sets_path.is_file() else None
    if sets is None:
        sets = malicious_sets(model, test, n, args.seed, args.quick)
    if "right_x" not in sets:  # a cache from before PGD: the same images, without C&W again
        sets["right_x"], sets["right_y"] = attacked_images(model, test, n, args.seed)
    if "pgd" not in sets:
        sets.update(pgd_set(model, sets, n, args.seed))
        with atomic_path(sets_path) as tmp:
            torch.save(sets, tmp)
    attack_seconds = time.perf_counter() - t0
    clean_ref = train_d.clean_subset(per_class, seed=args.seed)
    rows: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    fitted: dict[str, object] = {}
    for label, (name, p_ae, p_be) in DETECTORS.items():
        if args.quick:
            for p in (p_ae, p_be):
                if name in ("mutation",):
                    p["n_mutants"] = 50
                if name == "uncertainty":
                    p["n_samples"] = 50
                if name == "strip":
                    p["n_blend"] = 50
        row: dict = {"method": name, "params_ae": p_ae, "params_be": p_be}
        scores[label] = {}
        for kind, params in (("ae", p_ae), ("be", p_be)):
            key = f"{name}:{sorted(params.items())}"
            if key not in fitted:
                t0 = time.perf_counter()
                fitted[key] = create("input_detector", name, **params).fit(model, clean_ref)
                row[f"fit_seconds_{kind}"] = time.perf_counter() - t0
            det = fitted[key]
            s_clean = det.score(sets["clean"])
            t0 = time.perf_counter()
            s_mal = det.score(sets[kind])
            ms_batch = 1000 * (time.perf_counter() - t0) / len(sets[kind])
            other = "be" if kind == "ae" else "ae"
            scores[label][f"setting_{kind}"] = {"clean": s_clean.numpy(), kind: s_mal.numpy(),
                                                other: det.score(sets[other]).numpy()}
            if kind == "ae":  # PGD examples, scored by the AE setting
                row["auc_pgd"] = roc_auc(s_clean, det.score(sets["pgd"]))
            row[f"auc_{kind}"] = roc_auc(s_clean, s_mal)
            row[f"tpr_{kind}"] = float((s_mal > det.threshold_).float().mean())
            row[f"fpr_clean_test_{kind}"] = float((s_clean > det.threshold_).float().mean())
            row[f"threshold_{kind}"] = det.threshold_
            row[f"ms_per_input_batched_{kind}"] = ms_batch
        det_be = fitted[f"{name}:{sorted(p_be.items())}"]
        row["ms_per_input_single"] = single_input_ms(det_be, sets["be"], 10 if args.quick else 20)
        if label in PAPER:
            row["paper"] = PAPER[label]
        rows[label] = row
        print(f"{label:>32}: AUC AE {row['auc_ae']:.4f}  PGD {row['auc_pgd']:.4f}  BE {row['auc_be']:.4f}  "
              f"TPR@5% BE {row['tpr_be']:.3f} (clean test FPR {row['fpr_clean_test_be']:.3f})  "
              f"{row['ms_per_input_batched_be']:.2f} ms/input batched, {row['ms_per_input_single']:.1f} single",
              flush=True)
    suffix = "_quick" if args.quick else ""
    figs = figures(rows, scores, suffix)
    path = write_result(f"input_guard{suffix}", {
        "setup": {"model": info.get("name"), "model_info": info, "cta": cta, "asr": asr,
                  "n_clean": len(sets["clean"]), "n_ae": len(sets["ae"]), "n_be": len(sets["be"]),
                  "ae_attack": "cw (untargeted L2)", "ae_success": sets["ae_success"],
                  "ae_l2_mean": sets["ae_l2_mean"], "be_hit_rate": sets["be_hit_rate"],
                  "n_pgd": len(sets["pgd"]), "pgd_attack": "pgd linf eps 0.3, 40 steps of 0.01",
                  "pgd_success": sets["pgd_success"],
                  "attack_seconds": attack_seconds, "clean_reference": f"{len(clean_ref)} training images",
                  "fpr_target": 0.05, "device": "cpu", "threads": torch.get_num_threads()},
        "results": rows, "figures": figs, "seconds": time.perf_counter() - t_start})
    print(f"CTA {cta:.4f} ASR {asr:.4f}; wrote {path} and {', '.join(figs)}")


if __name__ == "__main__":
    main()
