"""L-RED's perceptible extension (appendix A.3, ``lred_perceptible``) on real MNIST models.

Xiang, Miller & Kesidis, L-RED, appendix A.3 sketches the annealed source weighting of
Algorithm 1 applied to mask+pattern estimation, as "a promising future research direction"; the
paper has no experiment for it. This benchmark measures what our implementation does on the
bench's cached MNIST ``borji_cnn`` models, with the paper's 8 clean test images per class and
three draws of those images (seeds 0-2):

- ``clean``: the shared clean model (must not be flagged);
- ``badnets5_to_1``: BadNets 5x5 white square, all classes -> 1 (``bench/nc_mnist.py``);
- ``patch_8to9``: Borji's 6x6 "C" patch, source 8 only -> 9 (``bench/bias_maps.py``'s cached
  model; skipped when that cache is missing), also scanned without annealing (uniform source
  weights, Neural Cleanse's all-sources assumption) to show what annealing adds.

Results are written after every scan and reused on a rerun (resume).

    python bench/lred_perceptible_mnist.py [--data-dir DIR] [--quick] [--threads N]
"""

from __future__ import annotations

import json

import torch
from _common import RESULTS, cached_only, load_mnist, mnist_clean_model, parser, write_result
from nc_mnist import badnets_model

from trojanscope.detectors.model.lred_perceptible import LREDPerceptible

SEEDS = (0, 1, 2)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    name = "lred_perceptible_mnist" + ("_quick" if args.quick else "")
    seeds = SEEDS[:1] if args.quick else SEEDS
    steps = 60 if args.quick else 300
    test = load_mnist("test", args.data_dir)
    models = {"clean": (mnist_clean_model(args.data_dir, args.seed)[0], None),
              "badnets5_to_1": (badnets_model(args.data_dir, args.seed, args.quick)[0], 1)}
    borji = cached_only("bias_maps_patch_8to9_ft1000_seed0")
    if borji is not None:
        models["patch_8to9"] = (borji, 9)
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    runs: dict = old.get("runs", {}) if old.get("steps") == steps else {}
    doc = {"paper": "Xiang, Miller & Kesidis, L-RED, appendix A.3 (no experiment in the paper)",
           "n_per_class": 8, "steps": steps, "seeds": list(seeds), "runs": runs,
           "skipped": [] if borji is not None else ["patch_8to9: run bench/bias_maps.py first"]}
    jobs = [(m, s, True) for m in models for s in seeds] + \
           ([("patch_8to9", s, False) for s in seeds] if borji is not None else [])
    for model_name, seed, anneal in jobs:
        key = f"{model_name}/seed{seed}" + ("" if anneal else "/uniform")
        if key in runs:
            continue
        model, true_target = models[model_name]
        det = LREDPerceptible(n_per_class=8, steps=steps, anneal=anneal, seed=seed)
        r = det.scan(model, test)
        runs[key] = {"model": model_name, "seed": seed, "anneal": anneal, "true_target": true_target,
                     "backdoored": r.backdoored, "target": r.target, "sources": r.sources,
                     "candidate_target": r.extra["candidate_target"], "p_value": r.p_value,
                     "mask_l1": r.per_class["mask_l1"], "seconds": r.seconds,
                     "correct": (r.backdoored and r.target == true_target) if true_target is not None
                     else not r.backdoored}
        print(f"{key}: backdoored={r.backdoored} target={r.target} p={r.p_value:.3g} ({r.seconds:.0f} s)",
              flush=True)
        write_result(name, doc)
    summary = {}
    for m in models:
        for anneal in (True, False):
            rows = [v for v in runs.values() if v["model"] == m and v["anneal"] == anneal]
            if rows:
                summary[m + ("" if anneal else "/uniform")] = f"{sum(v['correct'] for v in rows)}/{len(rows)} correct"
    doc["summary"] = summary
    print(summary, "->", write_result(name, doc))


if __name__ == "__main__":
    main()
