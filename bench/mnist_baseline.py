"""MNIST baseline: the clean ``borji_cnn`` and Borji's 8 -> 9 patch backdoor.

Borji, "Adversarial examples are useful too!" (sec. 3, experiment one, Fig. 2 and Fig. 23): the
CNN (conv20-conv50-fc500) is trained on pristine MNIST; a C-shaped patch is stamped in the
top-right corner of 2000 randomly chosen training images of the source class 8, which are
relabelled 9 (the other 8s keep their labels), and the CNN is fine-tuned on these data. The text
gives no patch size (the figure is lost); we use a 5x5 "C" one pixel from the corner, in the blank
area of most digits.

Claims checked: clean CTA >= 98% after one epoch; backdoored ASR >= 95% on test 8s with CTA >= 97%.
Models are cached as ``mnist_clean_borji_seed<seed>`` and ``mnist_borji_8to9_2000`` (bench/cache).

    python bench/mnist_baseline.py [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import copy
import time

import torch
from _common import cached_model, load_mnist, mnist_clean_model, parser, write_result

from trojanscope.attacks import PatchTrigger, PoisoningAttack
from trojanscope.metrics import accuracy, attack_success_rate
from trojanscope.models import create_model
from trojanscope.train import train

SOURCE, TARGET, COUNT = 8, 9, 2000


def c_patch(size: int = 5) -> torch.Tensor:
    """A [size, size] "C": top row, left column and bottom row on."""
    p = torch.zeros(size, size)
    p[0, :] = 1
    p[-1, :] = 1
    p[:, 0] = 1
    return p


def borji_trigger() -> PatchTrigger:
    return PatchTrigger(size=5, pattern=c_patch(5), location="top_right", margin=1)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads or 1)
    t0 = time.perf_counter()
    test = load_mnist("test", args.data_dir)
    trigger = borji_trigger()
    count = 500 if args.quick else COUNT
    attack = PoisoningAttack(trigger=trigger, target=TARGET, sources=[SOURCE], count=count,
                             remove_originals=True, seed=args.seed)
    if args.quick:  # smoke run: 10k training images, nothing shared with the full models
        def build_clean():
            tr = load_mnist("train", args.data_dir).clean_subset(1000, seed=args.seed)
            torch.manual_seed(args.seed)
            m = create_model("borji_cnn", 10, (1, 28, 28))
            train(m, tr, epochs=1, lr=0.01, batch_size=64, seed=args.seed)
            return m, {"arch": "borji_cnn", "num_classes": 10, "in_shape": [1, 28, 28]}

        clean, clean_info = cached_model(f"mnist_clean_borji_quick_seed{args.seed}", build_clean)
    else:
        clean, clean_info = mnist_clean_model(args.data_dir, seed=args.seed)

    def build_backdoor():
        tr = load_mnist("train", args.data_dir)
        if args.quick:
            tr = tr.clean_subset(1000, seed=args.seed)
        poisoned, idx = attack.poison_data(tr)
        m = copy.deepcopy(clean)  # Borji fine-tunes the clean model on the poisoned data
        hist = train(m, poisoned, epochs=1, lr=0.01, batch_size=64, seed=args.seed + 1)
        return m, {"arch": "borji_cnn", "num_classes": 10, "in_shape": [1, 28, 28],
                   "attack": {"trigger": "badnets", "size": 5, "pattern": c_patch(5).tolist(),
                              "location": "top_right", "margin": 1, "source": SOURCE, "target": TARGET,
                              "count": len(idx), "remove_originals": True, "seed": args.seed},
                   "finetune": {"from": clean_info["name"], "epochs": 1, "lr": 0.01, "batch_size": 64,
                                "seconds": hist["seconds"]}}

    name = "mnist_borji_8to9_quick" if args.quick else f"mnist_borji_8to9_{COUNT}"
    backdoored, bd_info = cached_model(name, build_backdoor)

    clean_cta = accuracy(clean, test)
    bd_cta = accuracy(backdoored, test)
    bd_asr = attack_success_rate(backdoored, test, trigger, TARGET, [SOURCE])
    clean_asr = attack_success_rate(clean, test, trigger, TARGET, [SOURCE])
    all_src = attack_success_rate(backdoored, test, trigger, TARGET)
    claims = {"clean_cta_ge_98": clean_cta >= 0.98, "backdoor_asr_ge_95": bd_asr["asr"] >= 0.95,
              "backdoor_cta_ge_97": bd_cta >= 0.97}
    payload = {
        "quick": args.quick,
        "paper": "Borji, Adversarial examples are useful too! (MNIST, 8->9 patch, 2000 poisoned)",
        "clean": {"model": clean_info.get("name"), "cta": clean_cta, "asr_8to9_patch": clean_asr["asr"],
                  "build_seconds": clean_info.get("build_seconds"), "cached": clean_info.get("cached")},
        "backdoored": {"model": bd_info.get("name"), "cta": bd_cta, "asr": bd_asr["asr"],
                       "asr_per_source": bd_asr["per_source"], "asr_other_classes": all_src["per_source"],
                       "attack": bd_info["attack"], "build_seconds": bd_info.get("build_seconds"),
                       "cached": bd_info.get("cached")},
        "claims": claims,
        "seconds": time.perf_counter() - t0,
    }
    path = write_result("mnist_baseline_quick" if args.quick else "mnist_baseline", payload)
    print(f"clean CTA {clean_cta:.2%} | backdoored CTA {bd_cta:.2%} ASR(8->9) {bd_asr['asr']:.2%} "
          f"| claims {claims} -> {path}")


if __name__ == "__main__":
    main()
