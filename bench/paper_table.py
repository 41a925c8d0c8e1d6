"""The L-RED paper's Table 2/3 on real MNIST: every model-level detector on ten groups of models.

Xiang, Miller & Kesidis, L-RED (sec. 5, Tables 2-3, appendix A.4) scan seven groups of CIFAR-10
ResNet-18s: G-1/G-3/G-9 (a "global" imperceptible chessboard, 1/3/9 source classes), L-1/L-3/L-9
(a "local" 2x2 square in one channel, 1/3/9 sources) and C-0 (clean). Issue 15 adds P (perceptible
BadNets patch, all-to-one), PS (the same patch, one source) and B (Borji exp. III:
``I_source + 0.1 I_target`` with a random target-class image per sample). Here every group is
built on real MNIST with ``borji_cnn``; every model is scanned by ``trojanscope scan-many`` with
the front door's defaults (``--method auto``: Neural Cleanse, L-RED, MM-BD, the sanity gate and
the combined verdict), exactly as a user would, and the table reads the per-model reports.

What differs from the paper, and why (2 CPU cores, minutes per model, not GPU-days):
- MNIST instead of CIFAR-10; each model trains from scratch with its own seed for 3 epochs
  (Adam, lr 1e-3, batch 64) on its own 2,000 training images per class (20k), the attacker's
  source images removed as in A.4.4 (the poisoned set keeps its size).
- Amplitudes and counts are raised until the attack is learned in 3 epochs (measured before the
  table, on models that are not in it): the global chessboard at 2/255 reached ASR 0% and at
  16/255 with 300 images 7%, so G uses 32/255 (still faint grey on a black background) and 1000
  poisoned images in all (1000/333/111 per source for 1/3/9 sources, the paper's 1:3:9 ratio);
  the local 2x2 square at 50/255 reached 9%, and at 100/255 anywhere in the image 0.3-48%
  (on a digit's strokes it is clipped away), so L uses 100/255 in the empty frame (1-3 pixels
  from an edge, place drawn per model) with the same 1000 images in all. P: a 3x3 white patch at the bottom right, 100 per source on all 9 sources; PS: the same
  patch, 900 on one source; B: ``I + 0.2 I_target``, 800 on one source.
- Targets and sources are drawn per model from its seed (the paper fixes one pair per group), so
  that a detector's bias towards one class cannot pass as detection.
- A model whose attack is not learned (ASR < 80% on test images of its sources: one L-3 pilot
  model reached 87%, a real if weaker backdoor) or whose clean accuracy is under 95% stays out
  of the table and is counted as a failed build, as in ULP's zoo, and the group's next seed is
  built in its place (up to 3 more); every model's ASR is recorded.
- B uses alpha 0.2 and 800 images: at Borji's alpha 0.1 the blend reached ASR 59-77% with clean
  accuracy 92.5-95% (pilot models, not in the table).

Nothing was tuned on these models: the detectors run with the defaults that ``trojanscope scan``
ships (set on other models: ``bench/scan_speed.py``), theta = 0.05 and the Cauchy combination.

    python bench/paper_table.py [--data-dir DIR] [--seeds 5] [--clean-seeds 10] [--groups G-1,...]
                                [--workers 2] [--executor local|ray] [--stage build|scan|table|all]
                                [--extra] [--ulp [--ulp-zoo 3]]

``--extra`` adds a second scan-many pass with the model detectors the front door leaves out
(``lred_perceptible``; ``bias_maps`` with a clean reference model); ``--ulp`` builds a zoo of
models like the table's from seeds the table never uses, trains a ULP on it, and scans the
table's models with it (the table is ULP's held-out test).

Models and scans are cached under ``bench/cache/paper_table/`` (a second run resumes both);
results go to ``bench/results/paper_table_mnist.json`` and ``.md``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _common import BENCH, RESULTS, data_root, parser, write_result

CACHE = BENCH / "cache" / "paper_table"
MODELS = CACHE / "models"
NUM_CLASSES = 10
PER_CLASS_TRAIN, EPOCHS, LR, BATCH = 2000, 3, 1e-3, 64
MIN_ASR, MIN_CTA = 0.8, 0.95

#: group -> (trigger kind, number of source classes or "all", poisoned images per source)
GROUPS: dict[str, tuple[str, int, int]] = {
    "G-1": ("global", 1, 1000), "G-3": ("global", 3, 333), "G-9": ("global", 9, 111),
    "L-1": ("square", 1, 1000), "L-3": ("square", 3, 333), "L-9": ("square", 9, 111),
    "P": ("patch", 9, 100), "PS": ("patch", 1, 900), "B": ("blend", 1, 800), "C-0": ("clean", 0, 0),
}
METHODS = ("neural_cleanse", "lred", "mm_bd")  # what the front door runs (--method auto)
#: the model detectors the front door leaves out, run in a second scan-many pass (``--extra``):
#: bias_maps needs a clean reference model of the task (REFERENCE, trained like C-0 with a seed
#: outside the table), lred_perceptible is experimental (run only when named). ULP runs in a
#: third pass (``--ulp``) with a ULP trained on its own zoo (ZOO_SEED0).
EXTRA_METHODS = ("lred_perceptible", "bias_maps")
REFERENCE = ("C-0", 1000)
#: the second pass costs 270-290 s per model on one thread (each method ~140 s: bias maps' 1000
#: adversarial samples per class, the annealed mask search's 300 steps), 2.1 h for all 54 models
#: on 2 cores; it runs on the first seeds of each group: 2 where the front door is weak
#: (one-class and perceptible backdoors, blends), 1 elsewhere, and 3 clean models.
EXTRA_SEEDS = {"G-1": 2, "L-1": 2, "P": 2, "PS": 2, "B": 2, "G-3": 1, "G-9": 1, "L-3": 1, "L-9": 1, "C-0": 3}


#: ULP (Kolouri et al. 2020) learns its patterns on a zoo of models of the suspect's architecture
#: and recipe. Its zoo is built exactly like the table's models (same groups, recipe and
#: failed-build rule) from seeds ZOO_SEED0.., which the table never uses (its seeds are 0..7): the
#: table is the held-out test. Zoo and table share the attack families, which is ULP's own
#: setting (train and test triggers of the same kinds), so the row is its favourable case.
ZOO = CACHE / "ulp-zoo"
ZOO_SEED0 = 100
ULP_FILE = CACHE / "ulp-mnist.safetensors"
ULP_INFO = CACHE / "ulp-mnist.json"  # how the ULP file was made (cached with it)


def plan(group: str, seed: int) -> dict[str, Any]:
    """Target, sources and seeds of model ``group``/``seed`` (deterministic)."""
    gi = list(GROUPS).index(group)
    kind, n_src, per_src = GROUPS[group]
    r = np.random.default_rng([gi, seed])
    target = int(r.integers(NUM_CLASSES))
    others = [c for c in range(NUM_CLASSES) if c != target]
    sources = sorted(int(c) for c in r.choice(others, size=n_src, replace=False)) if n_src else []
    train_seed = int(r.integers(2**31 - 1))
    # L: a 2x2 square in MNIST's empty frame (rows/columns 1-3 from an edge): on the digit's
    # strokes a +100/255 square is clipped away and was not learned (ASR 0.3-48%)
    side, along, depth = int(r.integers(4)), int(r.integers(1, 25)), int(r.integers(1, 4))
    where = [(depth, along), (26 - depth, along), (along, depth), (along, 26 - depth)][side]
    return {"name": f"{group}_s{seed}", "group": group, "kind": kind, "seed": seed,
            "target": target if kind != "clean" else None, "sources": sources,
            "per_source": per_src, "train_seed": train_seed,
            "location": list(where) if kind == "square" else None}


def trigger_of(p: dict[str, Any], train_data):
    from trojanscope.attacks import PatchTrigger
    from trojanscope.attacks.additive import AdditiveTrigger
    from trojanscope.attacks.blend import BlendTrigger

    if p["kind"] == "global":
        return AdditiveTrigger(pattern="global", amplitude=32 / 255)
    if p["kind"] == "square":
        return AdditiveTrigger(pattern="square", amplitude=100 / 255, patch_size=2, location=tuple(p["location"]))
    if p["kind"] == "patch":
        return PatchTrigger(size=3, pattern="white", location="bottom_right")
    if p["kind"] == "blend":
        bank = train_data.of_classes([p["target"]]).x
        return BlendTrigger(image=bank, alpha=0.2, mode="add", seed=p["seed"])
    raise ValueError(p["kind"])


def build_one(p: dict[str, Any], root: str, dest: Path = MODELS) -> dict[str, Any]:
    """Train model ``p`` (in a worker process, one thread) and save it with its sidecar in ``dest``."""
    import torch

    torch.set_num_threads(1)
    from trojanscope.attacks import PoisoningAttack
    from trojanscope.data import load_dataset
    from trojanscope.metrics import accuracy, attack_success_rate
    from trojanscope.models import create_model, save_model
    from trojanscope.train import train
    from trojanscope.utils import atomic_write_json

    info_path = dest / f"{p['name']}.build.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    t0 = time.perf_counter()
    tr = load_dataset("mnist", "train", root=root)
    te = load_dataset("mnist", "test", root=root)
    data = tr.clean_subset(PER_CLASS_TRAIN, seed=p["train_seed"])
    info: dict[str, Any] = dict(p)
    trig = None
    if p["kind"] != "clean":
        trig = trigger_of(p, data)
        att = PoisoningAttack(trigger=trig, target=p["target"], sources=p["sources"],
                              count_per_source=p["per_source"], remove_originals=True,
                              seed=p["train_seed"])
        data, idx = att.poison_data(data)
        info.update(trigger=repr(trig) if p["kind"] != "blend" else
                    f"BlendTrigger(image=<target-class training images>, alpha={trig.alpha}, mode='add')",
                    poisoned=len(idx))
    torch.manual_seed(p["train_seed"])
    m = create_model("borji_cnn", NUM_CLASSES, (1, 28, 28))
    train(m, data, epochs=EPOCHS, lr=LR, optimizer="adam", batch_size=BATCH, seed=p["train_seed"])
    m.eval()
    info["cta"] = accuracy(m, te)
    if trig is not None:
        info["asr"] = attack_success_rate(m, te, trig, p["target"], sources=p["sources"])["asr"]
    info["ok"] = info["cta"] >= MIN_CTA and (trig is None or info["asr"] >= MIN_ASR)
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    if info["ok"]:
        save_model(m, dest / f"{p['name']}.safetensors",
                   metadata={"dataset": "mnist", "paper_table": {k: info[k] for k in ("group", "target", "sources")}})
    atomic_write_json(info_path, info)
    return info


def build(plans: list[dict[str, Any]], root: str, workers: int, dest: Path = MODELS) -> list[dict[str, Any]]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with ProcessPoolExecutor(workers) as ex:
        for info in ex.map(build_one, plans, [root] * len(plans), [dest] * len(plans)):
            print(f"built {info['name']}: cta {info['cta']:.3f} asr {info.get('asr', float('nan')):.3f} "
                  f"ok={info['ok']} ({info['train_seconds']}s)", flush=True)
            out.append(info)
    return out


def train_zoo_ulp(root: str, workers: int, per_group: int) -> dict[str, Any]:
    """Build the ULP zoo (``per_group`` models of each backdoored group, as many clean ones) and
    train a ULP on all of it with ``trojanscope``'s defaults (M = 10, 500 steps, seed 0)."""
    import torch

    from trojanscope.detectors.model._ulp_train import roc_summary
    from trojanscope.detectors.model.ulp import train_ulp
    from trojanscope.models import load_model
    from trojanscope.utils import atomic_write_json

    bad = [g for g in GROUPS if g != "C-0"]
    plans = [plan(g, ZOO_SEED0 + s) for s in range(per_group) for g in bad]
    plans += [plan("C-0", ZOO_SEED0 + s) for s in range(per_group * len(bad))]  # balanced
    zoo = [b for b in build(plans, root, workers, ZOO) if b["ok"]]
    torch.set_num_threads(workers)
    models = [load_model(ZOO / f"{b['name']}.safetensors") for b in zoo]
    labels = torch.tensor([int(b["kind"] != "clean") for b in zoo])
    ulp = train_ulp(models, labels, num_classes=NUM_CLASSES, in_shape=(1, 28, 28), dataset="mnist", seed=0)
    train_roc = roc_summary(ulp.score_models(models), labels)
    ulp.info["zoo"] = {"models": [b["name"] for b in zoo], "failed_builds": len(plans) - len(zoo)}
    ulp.save(ULP_FILE)
    print(f"ULP trained on {len(zoo)} zoo models ({int(labels.sum())} poisoned): train AUC "
          f"{train_roc['auc']:.3f}", flush=True)
    info = {"zoo_models": len(zoo), "zoo_poisoned": int(labels.sum()), "failed_builds": len(plans) - len(zoo),
            "per_group": per_group, "seeds_from": ZOO_SEED0, "train_auc": train_roc["auc"],
            "train_accuracy_at_0.5": train_roc["accuracy_at_0.5"], "train_seconds": ulp.info["seconds"],
            "file": str(ULP_FILE.relative_to(BENCH.parent))}
    atomic_write_json(ULP_INFO, info)
    return info


def scan(built: list[dict[str, Any]], root: str, workers: int, executor: str,
         extra: Path | None = None, ulp: Path | None = None,
         extra_seeds: dict[str, int] | None = None) -> Path:
    """``trojanscope scan-many`` over the manifest of the models that were built; with ``extra``
    (the reference model), the second pass of :data:`EXTRA_METHODS`; with ``ulp`` (a trained
    ULP file), the ULP pass."""
    ok = [b for b in built if b["ok"]]
    if extra:  # the first EXTRA_SEEDS[g] models of each group that were built
        ok = [b for b in ok if [c["name"] for c in ok if c["group"] == b["group"]].index(b["name"])
              < (extra_seeds or EXTRA_SEEDS).get(b["group"], 0)]
    tag = "-extra" if extra else "-ulp" if ulp else ""
    manifest = CACHE / f"manifest{tag}.csv"
    rows = ["model,backdoored,target,group"]
    rows += [f"models/{b['name']}.safetensors,{str(b['kind'] != 'clean').lower()},"
             f"{'' if b['target'] is None else b['target']},{b['group']}" for b in ok]
    manifest.write_text("\n".join(rows) + "\n")
    out = CACHE / f"scan-{executor}{tag}"
    cmd = [sys.executable, "-m", "trojanscope", "scan-many", str(manifest), "--out", str(out),
           "--data", "mnist", "--data-dir", root, "--workers", str(workers), "--executor", executor,
           "--scan-arg=--split=test", "--timeout", "900"]
    if extra:
        cmd += ["--method", ",".join(EXTRA_METHODS), f"--scan-arg=--reference={extra}"]
    if ulp:
        cmd += ["--method", "ulp", f"--scan-arg=--ulp={ulp}"]
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    return out


def _method_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's own decision in a scan report (``methods[i].result``, schema 2)."""
    res = {}
    for m in report.get("methods", []):
        r = m.get("result") or {}
        work = (r.get("extra") or {}).get("work") or {}
        res[m.get("method")] = {"status": m.get("status"), "backdoored": r.get("backdoored"),
                                "target": r.get("target"), "candidate_target": m.get("candidate_target"),
                                "p_value": m.get("p_value"), "seconds": r.get("seconds"),
                                "statistic": r.get("statistic"),
                                "images_with_gradient": work.get("images_with_gradient")}
    return res


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    """scan-many's rows by model name (``G-1_s0``), read as scan-many reads them when resuming."""
    from trojanscope.fleet import read_results

    return {Path(m).stem: r for m, r in read_results(out / "results.jsonl").items()}


def _report(out: Path, row: dict[str, Any] | None) -> dict[str, Any]:
    path = out / Path(row["report"]).with_suffix(".json") if row and row.get("report") else None
    return json.loads(path.read_text()) if path and path.is_file() else {}


def table(built: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Per group and detector: detections with the right target (false alarms on C-0)."""
    rows = _rows(out)
    extra_out = out.with_name(out.name + "-extra")
    extra_rows = _rows(extra_out)
    ulp_out = out.with_name(out.name + "-ulp")
    ulp_rows = _rows(ulp_out)
    per_model = {}
    for b in built:
        if not b["ok"] or b["name"] not in rows:
            continue
        row = rows[b["name"]]
        methods = _method_rows(_report(out, row))
        methods.update({k: v for k, v in _method_rows(_report(extra_out, extra_rows.get(b["name"]))).items()
                        if k in EXTRA_METHODS})
        methods.update({k: v for k, v in _method_rows(_report(ulp_out, ulp_rows.get(b["name"]))).items()
                        if k == "ulp"})
        per_model[b["name"]] = {"group": b["group"], "target": b["target"], "sources": b["sources"],
                                "cta": b["cta"], "asr": b.get("asr"), "verdict": row["verdict"],
                                "combined_target": row.get("target"), "p_value": row.get("p_value"),
                                "seconds": row.get("seconds"), "methods": methods}
    groups: dict[str, Any] = {}
    for g in GROUPS:
        ms = [m for m in per_model.values() if m["group"] == g]
        cell: dict[str, Any] = {"models": len(ms),
                                "failed_builds": sum(1 for b in built if b["group"] == g and not b["ok"])}
        ran = [x for x in (*EXTRA_METHODS, "ulp") if any(x in m["methods"] for m in per_model.values())]
        for meth in (*METHODS, *ran):
            said = [(m["methods"].get(meth) or {}, m) for m in ms]
            cell[meth] = {"correct": sum(_correct(x.get("backdoored"), x.get("target"), m, meth in NO_TARGET)
                                         for x, m in said if x.get("status") == "ok"),
                          "flagged": sum(bool(x.get("backdoored")) for x, _ in said),
                          "ran": sum(x.get("status") == "ok" for x, _ in said),
                          "did_not_run": sum(x.get("status") != "ok" for x, _ in said),
                          "mean_seconds": _mean([x.get("seconds") for x, _ in said]),
                          "mean_images_with_gradient": _mean([x.get("images_with_gradient") for x, _ in said])}
        cell["combined"] = {
            "correct": sum(_correct(m["verdict"] == "backdoored", m["combined_target"], m) for m in ms),
            "flagged": sum(m["verdict"] == "backdoored" for m in ms),
            "inconclusive": sum(m["verdict"] == "inconclusive" for m in ms),
            "errors": sum(m["verdict"] == "error" for m in ms),
            "mean_seconds": _mean([m["seconds"] for m in ms])}
        groups[g] = cell
    res: dict[str, Any] = {"groups": groups, "models": per_model}
    ulp = [(m["methods"]["ulp"]["statistic"], m["target"] is not None) for m in per_model.values()
           if (m["methods"].get("ulp") or {}).get("status") == "ok"]
    if ulp and {b for _, b in ulp} == {True, False}:  # ROC AUC of P(poisoned) over the held-out table
        import torch

        from trojanscope.metrics import roc_auc

        res["ulp_table_auc"] = roc_auc(torch.tensor([p for p, b in ulp if not b]),
                                       torch.tensor([p for p, b in ulp if b]))
    return res


#: detectors that say whether a model is backdoored but name no target class
NO_TARGET = {"ulp"}


def _correct(said: bool | None, target: int | None, m: dict[str, Any], no_target: bool = False) -> bool:
    """L-RED sec. 5: a detection counts only with the right target; on a clean model, silence.
    A detector that names no target (ULP) counts on its detection alone, and the table says so."""
    if m["target"] is None:
        return not said
    return bool(said) and (no_target or target == m["target"])


def _mean(xs: list[Any]) -> float | None:
    xs = [float(x) for x in xs if isinstance(x, (int, float))]
    return round(sum(xs) / len(xs), 2) if xs else None


def markdown(res: dict[str, Any]) -> str:
    """The table (markdown) from a result document: README, docs and the .md file use it."""
    gs = [g for g in GROUPS if res["groups"].get(g, {}).get("models")]
    cols = " | ".join(gs)
    lines = [f"| detector | {cols} |", "|---|" + "---:|" * len(gs)]
    labels = {"neural_cleanse": "Neural Cleanse", "lred": "L-RED (RED-A)", "mm_bd": "MM-BD",
              "lred_perceptible": "L-RED perceptible (A.3, experimental)*",
              "bias_maps": "bias maps, clean reference given*",
              "ulp": "ULP, zoo of held-out seeds (detection only: no target)**",
              "combined": "**combined verdict**"}
    for meth, label in labels.items():
        if meth not in res["groups"][gs[0]]:
            continue
        cells = []
        for g in gs:
            c = res["groups"][g]
            n = c["models"] if meth == "combined" else c[meth].get("ran", c["models"])
            cell = f"{c[meth]['correct']}/{n}" if n else "-"
            if meth == "combined" and c[meth].get("inconclusive"):
                cell += f" ({c[meth]['inconclusive']} inc.)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    asr = {g: _mean([m["asr"] for m in res["models"].values() if m["group"] == g]) for g in gs}
    lines.append("| mean ASR of the models | " + " | ".join(
        "-" if asr[g] is None else f"{asr[g]:.2f}" for g in gs) + " |")
    lines.append("| seconds per scan (1 thread) | " + " | ".join(
        f"{res['groups'][g]['combined']['mean_seconds']:.0f}" for g in gs) + " |")
    met = [g for g in gs if g != "C-0" and res["groups"][g]["combined"]["correct"]
           >= 0.95 * res["groups"][g]["models"]]
    missed = [g for g in gs if g != "C-0" and g not in met]
    c0 = res["groups"].get("C-0")
    alarms = f"{c0['combined']['flagged']} false alarm(s) on {c0['models']} clean models" if c0 else \
        "no clean group"
    extra = any(m in res["groups"][gs[0]] for m in EXTRA_METHODS)
    def ran(m: dict[str, Any], x: str) -> bool:
        return (m["methods"].get(x) or {}).get("status") == "ok"

    n_extra = sum(1 for m in res["models"].values() if any(ran(m, x) for x in EXTRA_METHODS))
    secs = [sum(m["methods"][x].get("seconds") or 0 for x in EXTRA_METHODS)
            for m in res["models"].values() if all(ran(m, x) for x in EXTRA_METHODS)]
    cover = ("every model" if n_extra == len(res["models"]) else
             f"{n_extra} of the {len(res['models'])} models (the first of each group)")
    star = (f" *: not part of the front door's scan, run in a second pass on {cover}"
            + (f" ({min(secs):.0f}-{max(secs):.0f} s per model for the two)" if secs else "") + ".") if extra else ""
    if "ulp" in res["groups"][gs[0]]:
        z = res.get("ulp_zoo") or {}
        star += (f" **: a ULP (M = 10) trained on {z.get('zoo_models', '?')} models built like the "
                 f"table's ({z.get('per_group', '?')} per backdoored group and as many clean, seeds "
                 f"{ZOO_SEED0}+, none of the table's); it says whether a model is backdoored, not "
                 "to which class, so its cells count detections"
                 + (f"; its ROC AUC over the table's models is {res['ulp_table_auc']:.2f}"
                    if res.get("ulp_table_auc") is not None else "") + ".")
    return ("\n".join(lines) + "\n\nA cell is the number of models detected with the right target "
            "(C-0: not flagged) out of the models in the group the method ran on; inc. = inconclusive."
            + star + " Goal (issue 15): "
            "the combined verdict finds >= 95% of every group with the right target, with <= 1 false "
            f"alarm per 10 clean models. Met on: {', '.join(met) or 'none'}; missed on: "
            f"{', '.join(missed) or 'none'}; {alarms}.\n")


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="models per backdoored group")
    ap.add_argument("--clean-seeds", type=int, default=10, help="clean models (C-0): the goal is "
                    "stated per 10 clean models")
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default="local", choices=("local", "ray"))
    ap.add_argument("--stage", default="all", choices=("build", "scan", "table", "all"))
    ap.add_argument("--extra", action="store_true", help="also the model detectors the front door "
                    "leaves out (lred_perceptible, bias_maps with a clean reference), a second pass")
    ap.add_argument("--extra-per-group", type=int, default=None, help="with --extra: this many models "
                    "of every group (default: EXTRA_SEEDS, 1-3 per group)")
    ap.add_argument("--ulp", action="store_true", help="also ULP: build its zoo (held-out seeds), train "
                    "it, scan the table's models with it")
    ap.add_argument("--ulp-zoo", type=int, default=3, help="ULP zoo models per backdoored group (as "
                    "many clean ones in all)")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the committed "
                    "bench/results/paper_table_mnist.json and stop")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads((RESULTS / "paper_table_mnist.json").read_text())), end="")
        return
    root = str(data_root(args.data_dir))
    groups = [g.strip() for g in args.groups.split(",")]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        sys.exit(f"unknown group(s) {bad}; known: {list(GROUPS)}")
    def n_of(g: str) -> int:
        return args.clean_seeds if g == "C-0" else args.seeds

    plans = [plan(g, s) for g in groups for s in range(n_of(g))]
    t0 = time.perf_counter()
    built = build(plans, root, args.workers)
    for extra in range(args.seeds, args.seeds + 3):  # a failed build is replaced by the next seeds
        short = [g for g in groups if sum(b["ok"] for b in built if b["group"] == g) < n_of(g)]
        if not short:
            break
        built += build([plan(g, n_of(g) + extra - args.seeds) for g in short], root, args.workers)
    if args.stage == "build":
        return
    out = CACHE / f"scan-{args.executor}"
    if args.stage in ("scan", "all"):
        out = scan(built, root, args.workers, args.executor)
        if args.extra:
            ref = build([plan(*REFERENCE)], root, 1)[0]
            per = None if args.extra_per_group is None else {g: args.extra_per_group for g in GROUPS}
            scan(built, root, args.workers, args.executor, extra=MODELS / f"{ref['name']}.safetensors",
                 extra_seeds=per)
    if args.ulp and args.stage in ("scan", "all"):
        if not (ULP_FILE.is_file() and ULP_INFO.is_file()):
            train_zoo_ulp(root, args.workers, args.ulp_zoo)
        scan(built, root, args.workers, args.executor, ulp=ULP_FILE)
    ulp_zoo = json.loads(ULP_INFO.read_text()) if ULP_INFO.is_file() else None
    res = table(built, out)
    if ulp_zoo and any("ulp" in m["methods"] for m in res["models"].values()):
        res["ulp_zoo"] = ulp_zoo
    res.update(paper="Xiang, Miller & Kesidis, L-RED, Tables 2-3 (layout); MNIST edition",
               recipe={"arch": "borji_cnn", "train_images_per_class": PER_CLASS_TRAIN, "epochs": EPOCHS,
                       "lr": LR, "optimizer": "adam", "batch_size": BATCH, "min_asr": MIN_ASR,
                       "min_cta": MIN_CTA},
               groups_spec={g: dict(zip(("trigger", "sources", "per_source"), GROUPS[g], strict=True)) for g in groups},
               scan=("trojanscope scan-many (front door: --method auto, sanity gate, Cauchy combination, "
                     "20 MNIST test images per class, seed 0), executor " + args.executor),
               builds=[{k: b.get(k) for k in ("name", "group", "target", "sources", "cta", "asr", "ok",
                                               "train_seconds")} for b in built],
               seconds=round(time.perf_counter() - t0, 1))
    write_result("paper_table_mnist", res)
    md = markdown(res)
    (RESULTS / "paper_table_mnist.md").write_text(
        "# L-RED Table 2 layout on MNIST (bench/paper_table.py)\n\n" + md +
        f"\nMade by `python {' '.join(shlex.quote(a) for a in sys.argv)}`; data in paper_table_mnist.json.\n")
    print(md)


if __name__ == "__main__":
    main()
