"""Training and inference speed (images/second) of every registered architecture on this machine.

Each architecture takes SGD steps (cross-entropy, momentum, batch 32, as in
:func:`trojanscope.train.train`) on random images of its natural input shape (1x28x28 for the
MNIST networks, 3x32x32 for the CIFAR/GTSRB ones) for a time budget after one warm-up step;
inference is timed in eval mode without gradients. The load average is recorded: on a shared machine the numbers are noisy and low.

    python bench/train_speed.py [--quick] [--threads N] [--seconds S] [--batch-size B] [--arch a,b]
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from _common import parser, write_result

from trojanscope import available
from trojanscope.models import create_model

MNIST_NETS = ("small_cnn", "borji_cnn", "lenet5", "vgg_small")


def in_shape_of(arch: str) -> tuple[int, int, int]:
    return (1, 28, 28) if arch in MNIST_NETS else (3, 32, 32)


def measure(arch: str, budget_s: float, max_steps: int, batch: int, seed: int) -> dict[str, float]:
    """SGD steps (as in :func:`trojanscope.train.train`) until ``budget_s`` seconds or ``max_steps``."""
    shape = in_shape_of(arch)
    k = 43 if arch == "nc_gtsrb" else 10
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g)
    y = torch.randint(0, k, (batch,), generator=g)
    torch.manual_seed(seed)
    model = create_model(arch, k, shape)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step()  # warm-up
    steps, t0 = 0, time.perf_counter()
    while steps < max_steps and (steps == 0 or time.perf_counter() - t0 < budget_s):
        step()
        steps += 1
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        model(x)
        evals, t0 = 0, time.perf_counter()
        while evals < max_steps and (evals == 0 or time.perf_counter() - t0 < budget_s / 3):
            model(x)
            evals += 1
        eval_s = time.perf_counter() - t0
    return {"in_shape": list(shape), "num_classes": k, "params": sum(p.numel() for p in model.parameters()),
            "train_images_per_s": batch * steps / train_s, "eval_images_per_s": batch * evals / eval_s,
            "train_steps": steps, "eval_steps": evals, "batch_size": batch}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None, help="time budget per architecture")
    p.add_argument("--max-steps", type=int, default=20, help="at most this many timed SGD steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--arch", default=None, help="comma-separated subset")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    budget = args.seconds or (3.0 if args.quick else 15.0)
    archs = args.arch.split(",") if args.arch else available("arch")
    load_before = os.getloadavg()
    results = {}
    for arch in archs:
        results[arch] = measure(arch, budget, args.max_steps, args.batch_size, args.seed)
        r = results[arch]
        print(f"{arch:15s} {tuple(r['in_shape'])!s:12s} train {r['train_images_per_s']:8.1f} img/s   "
              f"eval {r['eval_images_per_s']:8.1f} img/s", flush=True)
    load_after = os.getloadavg()
    cpus = os.cpu_count() or 1
    noisy = max(load_before[0], load_after[0]) > 0.5 * cpus
    write_result("train_speed_quick" if args.quick else "train_speed", {
        "quick": args.quick,
        "device": "cpu",
        "cpu_count": cpus,
        "seconds_per_arch": budget,
        "loadavg_1m_before_after": [load_before[0], load_after[0]],
        "machine_shared_noisy": noisy,
        "note": ("shared machine: other jobs were running (load average above half the CPU count), "
                 "so these speeds are pessimistic and noisy" if noisy else "machine was quiet"),
        "results": results,
    })


if __name__ == "__main__":
    main()
