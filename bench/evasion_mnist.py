"""Evasion attacks on the shared clean MNIST model: accuracy under attack and perturbation norms.

A reference for the input-guard benchmarks (which use PGD and C&W adversarial examples) and a
sanity check of the attacks on real data: a naturally trained MNIST CNN should fall to ~0%
accuracy under PGD at Linf eps = 0.3, and C&W L2 should succeed on ~100% of the images with
mean L2 norms of the order of 1-3 (the scale Carlini & Wagner 2017 report for MNIST).

    python bench/evasion_mnist.py [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import time

import torch
from _common import load_mnist, mnist_clean_model, parser, write_result

from trojanscope import _registry

CONFIGS = [
    ("fgsm", {"eps": 0.1}, "linf"),
    ("fgsm", {"eps": 0.3}, "linf"),
    ("bim", {"eps": 0.1, "steps": 10}, "linf"),
    ("pgd", {"eps": 0.1, "steps": 40, "step_size": 0.01}, "linf"),
    ("pgd", {"eps": 0.3, "steps": 40, "step_size": 0.01}, "linf"),
    ("pgd", {"eps": 2.0, "steps": 40, "step_size": 0.1, "norm": "l2"}, "l2"),
    ("cw", {}, "l2"),
]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="test images (default 500, quick 100)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    n = a.n or (100 if a.quick else 500)
    model, info = mnist_clean_model(a.data_dir)
    te = load_mnist("test", a.data_dir)
    x, y = te.x[:n], te.y[:n]
    target = (y + 1) % 10
    with torch.no_grad():
        clean_acc = float((model(x).argmax(1) == y).float().mean())
    rows = []
    for name, params, norm in CONFIGS:
        attack = _registry.create("evasion", name, **params)
        row: dict = {"attack": name, "params": attack.get_params(), "norm": norm}
        for mode in ("untargeted", "targeted"):
            t0 = time.perf_counter()
            xa = attack.run(model, x, y) if mode == "untargeted" else attack.run(model, x, target=target)
            dt = time.perf_counter() - t0
            d = (xa - x).flatten(1)
            with torch.no_grad():
                pred = model(xa).argmax(1)
            row[mode] = {"accuracy": float((pred == y).float().mean()),
                         "target_hit": float((pred == target).float().mean()),
                         "linf_max": float(d.abs().amax(1).max()), "l2_mean": float(d.norm(dim=1).mean()),
                         "seconds": dt}
        rows.append(row)
        print(name, params, {m: {k: round(v, 3) for k, v in row[m].items()} for m in ("untargeted", "targeted")},
              flush=True)
    write_result("evasion_mnist_quick" if a.quick else "evasion_mnist",
                 {"model": info.get("name"), "model_cta": info.get("cta"), "n": n, "clean_accuracy": clean_acc,
                  "targets": "(y + 1) mod 10", "results": rows})


if __name__ == "__main__":
    main()
