"""Adversarial bias maps on MNIST: Borji, "Adversarial examples are useful too!", exps. I and III.

The clean ``borji_cnn`` (bench/_common.py ``mnist_clean_model``) is the reference ("backbone").
Each attack stamps its trigger on 2000 randomly chosen training images of the source class,
relabels them to the target (the other source images keep their labels) and fine-tunes a copy
of the clean model on these data (sec. 3). The patch is the C of the paper's code (github.com/
aliborji/Backdoor_defense, backdoor.ipynb): 6x6 with 2-pixel strokes, rows 1-6, columns 21-26
(top right). Attacks: patch 8->9, 0->3, 4->7, 2->5 (exp. I, Fig. 8); blend ``I_8 + 0.1 I_9`` with
a random 9 per poisoned image, and multiplication ``clip(2 x)`` (exp. III, Fig. 22).

For every attack and every input (blank, noise, data) the scan reports the Euclidean distance
between the bias maps of the attacked and the clean model per class (Algorithm I, eq. 1, 10
FGSM iterations, eps 0.1). Claim (Fig. 8): the distance curve peaks at the source or the target.
Algorithm II (eq. 2) runs on the 8->9 patch model with noise inputs (Fig. 9).

    python bench/bias_maps.py [--data-dir DIR] [--quick] [--samples N] [--figures-only]

Results: bench/results/bias_maps.json (resumes: finished entries are kept); figures
bench/results/bias_maps_*.png; the maps themselves in bench/cache/bias_maps/ (gitignored).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from _common import (
    CACHE,
    RESULTS,
    cached_model,
    load_mnist,
    mnist_clean_model,
    parser,
    write_result,
)

from trojanscope.attacks import PatchTrigger, PoisoningAttack, create_trigger
from trojanscope.detectors.model.bias_maps import BiasMaps
from trojanscope.metrics import accuracy, attack_success_rate
from trojanscope.train import train
from trojanscope.utils import atomic_path

COUNT = 2000
INPUTS = ("blank", "noise", "data")
MAPS = CACHE / "bias_maps"
# name -> (trigger kind, source, target)
ATTACKS = {
    "patch_8to9": ("patch", 8, 9),
    "patch_0to3": ("patch", 0, 3),
    "patch_4to7": ("patch", 4, 7),
    "patch_2to5": ("patch", 2, 5),
    "blend_8to9": ("blend", 8, 9),
    "multiply_8to9": ("multiply", 8, 9),
}


def borji_c_patch() -> torch.Tensor:
    """The 6x6 "C" of the paper's notebook: rows 0-1 and 4-5 full, rows 2-3 columns 0-1."""
    p = torch.zeros(6, 6)
    p[0:2, :] = 1
    p[4:6, :] = 1
    p[2:4, 0:2] = 1
    return p


def make_trigger(kind: str, target: int, train_data):
    if kind == "patch":
        return PatchTrigger(size=6, pattern=borji_c_patch(), location="top_right", margin=1)
    if kind == "blend":  # I_source + 0.1 * I_target, a random target image per poisoned sample
        bank = train_data.of_classes([target]).x
        return create_trigger("blend", image=bank, alpha=0.1, mode="add")
    if kind == "multiply":
        return create_trigger("multiply", factor=2.0)
    raise ValueError(kind)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=None,
                   help="starting inputs per class (default 200; the paper 1000; 100 with --quick)")
    p.add_argument("--finetune-per-class", type=int, default=1000,
                   help="fine-tune on every source image + N images of each other class "
                        "(0 = the whole training set, as the paper)")
    p.add_argument("--figures-only", action="store_true", help="redraw the figures from the cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    suffix = "_quick" if args.quick else ""
    name = f"bias_maps{suffix}"
    if args.figures_only:
        draw_figures(suffix)
        return
    n_samples = args.samples or (100 if args.quick else 200)
    attacks = {"patch_8to9": ATTACKS["patch_8to9"]} if args.quick else ATTACKS
    count = 500 if args.quick else COUNT

    train_d, test = load_mnist("train", args.data_dir), load_mnist("test", args.data_dir)
    if args.quick:  # smoke run: fine-tune on 10k images
        train_d = train_d.clean_subset(1000, seed=args.seed)
    clean, clean_info = mnist_clean_model(args.data_dir, seed=args.seed)
    probe = test.clean_subset(100, seed=args.seed)  # 1000 unlabelled test images for "data"
    path = RESULTS / f"{name}.json"
    done: dict = {}
    if path.is_file():
        import json

        old = json.loads(path.read_text())
        if (old.get("n_samples"), old.get("finetune_per_class")) == (n_samples, args.finetune_per_class):
            done = old.get("attacks", {})
    payload = {"paper": "Borji, Adversarial examples are useful too! (arXiv 2005.06107)",
               "finetune_per_class": args.finetune_per_class,
               "reference": clean_info.get("name"), "reference_cta": clean_info.get("cta"),
               "n_samples": n_samples, "iterations": 10, "eps": 0.1, "poison_count": count,
               "probe_images": len(probe), "attacks": done}
    dets = {inp: BiasMaps(reference=clean, inputs=inp, n_samples=n_samples, iterations=10,
                          eps=0.1, seed=args.seed) for inp in INPUTS}
    MAPS.mkdir(parents=True, exist_ok=True)

    for att, (kind, src, tgt) in attacks.items():
        trig = make_trigger(kind, tgt, train_d)

        def build(trig=trig, src=src, tgt=tgt):
            attack = PoisoningAttack(trigger=trig, target=tgt, sources=[src], count=count,
                                     remove_originals=True, seed=args.seed)
            poisoned, idx = attack.poison_data(train_d)
            if args.finetune_per_class:  # all source images (poisoned or not) + N per other class
                keep = torch.zeros(len(poisoned), dtype=torch.bool)
                keep[idx] = True
                keep |= train_d.y == src
                pool = torch.nonzero(train_d.y != src).flatten()
                g = torch.Generator().manual_seed(args.seed)
                chosen = torch.cat([pool[train_d.y[pool] == c][torch.randperm(
                    int((train_d.y[pool] == c).sum()), generator=g)[:args.finetune_per_class]]
                    for c in range(10) if c != src])
                keep[chosen] = True
                poisoned = poisoned.subset(torch.nonzero(keep).flatten())
            m = copy.deepcopy(clean)  # Borji fine-tunes the clean model on the poisoned data
            hist = train(m, poisoned, epochs=1, lr=0.01, batch_size=64, seed=args.seed + 1)
            return m, {"arch": "borji_cnn", "num_classes": 10, "in_shape": [1, 28, 28],
                       "attack": {"trigger": repr(trig)[:200], "source": src, "target": tgt,
                                  "count": len(idx), "remove_originals": True},
                       "finetune": {"from": clean_info.get("name"), "epochs": 1, "lr": 0.01,
                                    "images": len(poisoned), "seconds": hist["seconds"]}}

        model, info = cached_model(f"bias_maps_{att}_ft{args.finetune_per_class}{suffix}_seed{args.seed}",
                                   build)
        entry = done.get(att, {})
        entry.update(source=src, target=tgt, trigger=kind, cta=accuracy(model, test),
                     finetune_images=info.get("finetune", {}).get("images"),
                     asr=attack_success_rate(model, test, trig, tgt, sources=[src])["asr"])
        for inp in INPUTS:
            if inp in entry.get("inputs", {}):
                continue
            t0 = time.perf_counter()
            r = dets[inp].scan(model, probe)
            d = r.per_class["distance"]
            peak = max(range(10), key=lambda c: d[c])
            entry.setdefault("inputs", {})[inp] = {
                "distance": d, "z": r.per_class["z"], "ratio_pred": r.per_class["ratio_pred"],
                "reference_ratio_pred": r.per_class.get("reference_ratio_pred"),
                "peak": peak, "peak_at_source_or_target": peak in (src, tgt),
                "backdoored": r.backdoored, "target": r.target, "z_target": r.anomaly_index,
                "score": r.statistic,
                "seconds": time.perf_counter() - t0}
            with atomic_path(MAPS / f"{att}{suffix}_{inp}.pt") as tmp:
                torch.save({**{k: v.cpu() for k, v in r.trigger.items()},
                            "ratio_pred": torch.tensor(r.per_class["ratio_pred"]),
                            "reference_ratio_pred": torch.tensor(r.per_class["reference_ratio_pred"]),
                            "distance": torch.tensor(d), "source": src, "target": tgt}, tmp)
            payload["attacks"][att] = entry
            write_result(name, payload)
            print(f"{att:>14} {inp:>5}: peak {peak} (source {src}, target {tgt}) z={r.anomaly_index:.2f} "
                  f"backdoored={r.backdoored} [{' '.join(f'{v:.2f}' for v in d)}] "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        payload["attacks"][att] = entry
        write_result(name, payload)

    if "algorithm_II" not in payload:
        t0 = time.perf_counter()
        model, _ = cached_model(f"bias_maps_patch_8to9_ft{args.finetune_per_class}{suffix}_seed{args.seed}",
                                lambda: None)
        n2 = 10 if args.quick else 30
        r = BiasMaps(reference=clean, inputs="noise", algorithm="II", n_samples=n2, iterations=10,
                     eps=0.1, seed=args.seed).scan(model, probe)
        payload["algorithm_II"] = {
            "attack": "patch_8to9", "inputs": "noise", "n_samples": n2,
            "column_distance": r.per_class["distance"], "z": r.per_class["z"],
            "source_distance": r.per_class["source_distance"], "source_z": r.per_class["source_z"],
            "target": r.target, "sources": r.sources, "backdoored": r.backdoored,
            "pair_distance": r.extra["pair_distance"], "seconds": time.perf_counter() - t0}
        with atomic_path(MAPS / f"algorithm_II{suffix}.pt") as tmp:
            torch.save({k: v.cpu() for k, v in r.trigger.items()}
                       | {"pair_distance": torch.tensor(r.extra["pair_distance"])}, tmp)
        write_result(name, payload)
        print(f"algorithm II: column distances {[round(v, 2) for v in r.per_class['distance']]} "
              f"target={r.target} sources={r.sources}", flush=True)
    draw_figures(suffix)


def draw_figures(suffix: str) -> None:
    """Figures like the paper's from the cached maps (Figs. 4, 8, 9, 22)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    from trojanscope.report import figures_bias as fb

    res = json.loads((RESULTS / f"bias_maps{suffix}.json").read_text())
    out: list[Path] = []
    for att, _entry in res["attacks"].items():
        for inp in INPUTS:
            f = MAPS / f"{att}{suffix}_{inp}.pt"
            if not f.is_file():
                continue
            m = torch.load(f, weights_only=True)
            if att == "patch_8to9" and inp == "data" or att == "blend_8to9" and inp == "noise":
                fig = fb.bias_map_grid(m["bias_maps"], m["reference_maps"], m["ratio_pred"],
                                       m["reference_ratio_pred"],
                                       title=f"{att} ({inp} inputs): attacked (top) vs clean (bottom)")
                out.append(fb.save(fig, RESULTS / f"bias_maps{suffix}_{att}_{inp}_grid.png"))
    fig = fb.distance_panels({att: {inp: e["inputs"][inp]["distance"] for inp in e.get("inputs", {})}
                              for att, e in res["attacks"].items()},
                             marks={att: (e["source"], e["target"]) for att, e in res["attacks"].items()})
    out.append(fb.save(fig, RESULTS / f"bias_maps{suffix}_distances.png"))
    f2 = MAPS / f"algorithm_II{suffix}.pt"
    if f2.is_file():
        m = torch.load(f2, weights_only=True)
        fig = fb.pair_grid(m["pair_maps"], title="Algorithm II, 8->9 patch, noise inputs "
                           "(rows: source, columns: prediction)")
        out.append(fb.save(fig, RESULTS / f"bias_maps{suffix}_algorithm_II.png"))
    for pth in out:
        print("wrote", pth)


if __name__ == "__main__":
    main()
