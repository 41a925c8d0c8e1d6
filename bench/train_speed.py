"""Training and inference speed (images/second) of every registered architecture on this machine.

Each architecture trains for a few SGD steps on random images of its natural input shape
(1x28x28 for the MNIST networks, 3x32x32 for the CIFAR/GTSRB ones) through
:func:`trojanscope.train.train`, after one warm-up step; inference is timed in eval mode without
gradients. The load average is recorded: on a shared machine the numbers are noisy and low.

    python bench/train_speed.py [--quick] [--threads N] [--steps N] [--batch-size B]
"""

from __future__ import annotations

import os
import time

import torch
from _common import parser, write_result

from trojanscope import available
from trojanscope.data import ImageData
from trojanscope.models import create_model
from trojanscope.train import train

MNIST_NETS = ("small_cnn", "borji_cnn", "lenet5", "vgg_small")


def in_shape_of(arch: str) -> tuple[int, int, int]:
    return (1, 28, 28) if arch in MNIST_NETS else (3, 32, 32)


def measure(arch: str, steps: int, batch: int, seed: int) -> dict[str, float]:
    shape = in_shape_of(arch)
    k = 43 if arch == "nc_gtsrb" else 10
    g = torch.Generator().manual_seed(seed)
    data = ImageData(torch.rand(batch * steps, *shape, generator=g),
                     torch.randint(0, k, (batch * steps,), generator=g), k, name="random")
    torch.manual_seed(seed)
    model = create_model(arch, k, shape)
    train(model, data.subset(torch.arange(batch)), epochs=1, batch_size=batch, lr=1e-3)  # warm-up
    t0 = time.perf_counter()
    train(model, data, epochs=1, batch_size=batch, lr=1e-3)
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        model(data.x[:batch])
        t0 = time.perf_counter()
        for i in range(steps):
            model(data.x[i * batch : (i + 1) * batch])
        eval_s = time.perf_counter() - t0
    return {"in_shape": list(shape), "num_classes": k, "params": sum(p.numel() for p in model.parameters()),
            "train_images_per_s": batch * steps / train_s, "eval_images_per_s": batch * steps / eval_s,
            "train_seconds": train_s, "steps": steps, "batch_size": batch}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="timed SGD steps per architecture")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch", default=None, help="comma-separated subset")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    steps = args.steps or (2 if args.quick else 8)
    archs = args.arch.split(",") if args.arch else available("arch")
    load_before = os.getloadavg()
    results = {}
    for arch in archs:
        results[arch] = measure(arch, steps, args.batch_size, args.seed)
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
        "loadavg_1m_before_after": [load_before[0], load_after[0]],
        "machine_shared_noisy": noisy,
        "note": ("shared machine: other jobs were running (load average above half the CPU count), "
                 "so these speeds are pessimistic and noisy" if noisy else "machine was quiet"),
        "results": results,
    })


if __name__ == "__main__":
    main()
