"""Certified defences on MNIST-1-7 (Steinhardt, Koh & Liang 2017, Figure 2 setting).

Binary 1-vs-7 on raw pixels (n = 13007, D = 784, box [0, 1]), linear SVM with
||theta||^2 <= 0.8, eta = 0.1, radii at the 70th percentile (the authors' released settings).
For sphere, slab and sphere+slab: the upper bound U*, the Proposition-1 lower bound and the
candidate attack's test loss / error for eps in {0, 0.05, 0.1, 0.2, 0.3}; with --data-dependent
also the data-dependent sanitiser for sphere+slab (centroids re-estimated on clean + poisoned
data). Algorithm 1 runs min(eps n, --max-steps) steps (each candidate point then weighs
eps n / T; the bound stays valid, the Proposition-1 gap is Regret(T) / T).

Writes bench/results/certify.json and bench/results/certify.png. Each defence's rows are cached
in bench/cache/ so an interrupted run resumes where it stopped.

    nice python bench/certify.py [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import json
import time

import torch
from _common import CACHE, RESULTS, load_mnist, parser, write_result

from trojanscope.certify import Certifier
from trojanscope.certify.plot import certificate_rows, plot_certificates
from trojanscope.types import Certificate
from trojanscope.utils import atomic_write_json


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--eps", default="0,0.05,0.1,0.2,0.3")
    p.add_argument("--per-class", type=int, default=None,
                   help="use this many training images per class (default: all 13007)")
    p.add_argument("--train-iters", type=int, default=500, help="FISTA iterations per SVM training")
    p.add_argument("--data-dependent", action="store_true",
                   help="also the data-dependent sanitiser rows for sphere+slab (about 2.5x the time)")
    p.add_argument("--max-steps", type=int, default=400,
                   help="cap on Algorithm 1's steps (each candidate point then weighs eps n / T)")
    p.add_argument("--defense", default="sphere,slab,sphere+slab",
                   help="run only these (rows of the others come from bench/cache when present)")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    eps = [float(e) for e in args.eps.split(",")]
    tr = load_mnist("train", args.data_dir).of_classes([1, 7])
    te = load_mnist("test", args.data_dir).of_classes([1, 7])
    if args.per_class:
        tr = tr.clean_subset(args.per_class, seed=args.seed)
    if args.quick:
        tr, te = tr.clean_subset(500, seed=args.seed), te.clean_subset(300, seed=args.seed)
        eps = [0, 0.05, 0.1]
    tag = "certify_quick" if args.quick else "certify"
    sub = f"_pc{args.per_class}" if args.per_class else ""
    certs: list[Certificate] = []
    timings = {}
    todo = args.defense.split(",")
    missing = []
    for defense in ("sphere", "slab", "sphere+slab"):
        dd = defense == "sphere+slab" and args.data_dependent
        cache = CACHE / (f"{tag}_{defense.replace('+', '_')}{'_dd' if dd else ''}_{'_'.join(map(str, eps))}"
                         f"_T{args.max_steps}_it{args.train_iters}{sub}.json")
        if cache.is_file():
            rows = json.loads(cache.read_text())
            certs += [Certificate(**r) for r in rows]
            continue
        if defense not in todo:
            missing.append(defense)
            continue
        t0 = time.perf_counter()
        got = Certifier(defense=defense, data_dependent=dd, max_steps=args.max_steps,
                        train_iters=args.train_iters).certify(
            tr.x, tr.y, eps, te.x, te.y, classes=[1, 7], callback=lambda s: print(s, flush=True))
        timings[defense] = time.perf_counter() - t0
        for c in got:
            c.extra["seconds_defense"] = timings[defense]
        atomic_write_json(cache, [c.to_dict() for c in got])
        certs += got
    if missing:
        print(f"not yet computed: {missing}; run again when their processes finish")
        return
    for c in certs:
        print(f"{c.defense:30s} eps={c.eps:<5} U*={c.upper_bound:.4f} lower={c.lower_bound:.4f} "
              f"attack loss={c.attack_loss:.4f} err={c.attack_error:.4f}")
    png = RESULTS / f"{tag}.png"
    plot_certificates(certs, png, title=f"MNIST-1-7 (n={len(tr)}), linear SVM, sanitisation at percentile 70")
    path = write_result(tag, {
        "schema": 1,
        "dataset": "mnist", "classes": [1, 7], "n_train": len(tr), "n_test": len(te),
        "settings": {"rho": Certifier().rho, "eta": 0.1, "percentile": 70, "box": [0, 1],
                     "max_steps": args.max_steps, "train_iters": args.train_iters,
                     "per_class": args.per_class},
        "rows": certificate_rows(certs),
        "plot": str(png.relative_to(RESULTS.parent.parent)),
    })
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
