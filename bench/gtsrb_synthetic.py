"""A GTSRB-shaped (43 classes, 3x32x32) model scanned with NO data: ``trojanscope scan --data none``.

There are no traffic-sign images on this machine, so the task is a synthetic one with GTSRB's
shape: 43 "sign" classes, each a (shape, rim colour, inner glyph) triple out of 6 shapes
(circle, square, diamond, triangle up, triangle down, octagon) x 4 rim colours x 4 glyphs (none,
horizontal bar, vertical bar, dot), drawn at a random position (+-3 px), size (radius 9-13 px) and
brightness on a random smooth coloured background with pixel noise. 140 training and 30 test
images per class, seeded. A ``small_cnn`` is trained twice with the same seed: clean, and with a
BadNets patch (3x3 random colours, bottom right) -> class 7 at 10% poison. Both are saved with a
sidecar (``bench/cache/gtsrb_synth/*.safetensors``) and scanned through the CLI exactly as a user
without data would: ``python -m trojanscope scan MODEL --data none --json REPORT``, with 10 random
starts and 100 steps (a third of the paper code's 30 x 300: 43 classes x 30 starts x 300 steps
take about 14 minutes per model on one loaded CPU thread).

    nice -n 10 python bench/gtsrb_synthetic.py [--threads 1] [--restarts 10] [--steps 100]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import BENCH, CACHE, cached_model, parser, write_result

from trojanscope.attacks import PatchTrigger, PoisoningAttack
from trojanscope.data import ImageData
from trojanscope.metrics import accuracy, attack_success_rate
from trojanscope.models import create_model, save_model
from trojanscope.train import train

K, SIDE, TARGET = 43, 32, 7
SHAPES = ("circle", "square", "diamond", "tri_up", "tri_down", "octagon")
COLOURS = ((0.85, 0.1, 0.1), (0.1, 0.2, 0.85), (0.95, 0.85, 0.1), (0.1, 0.6, 0.2))
GLYPHS = ("none", "hbar", "vbar", "dot")


def class_specs(seed: int = 0) -> list[tuple[int, int, int]]:
    """The 43 (shape, colour, glyph) index triples, a seeded pick among the 96."""
    allc = [(s, c, g) for s in range(len(SHAPES)) for c in range(len(COLOURS)) for g in range(len(GLYPHS))]
    perm = torch.randperm(len(allc), generator=torch.Generator().manual_seed(seed))[:K]
    return [allc[i] for i in perm.tolist()]


def _shape_mask(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    masks = torch.stack([
        u * u + v * v <= 1.0,
        torch.maximum(au, av) <= 0.85,
        au + av <= 1.0,
        (v >= -0.95) & (v <= 0.75) & (au <= (v + 0.95) * 0.6),
        (v <= 0.95) & (v >= -0.75) & (au <= (0.95 - v) * 0.6),
        torch.maximum(torch.maximum(au, av), (au + av) / 1.35) <= 0.9,
    ])  # [6, N, H, W]
    return masks.gather(0, shape.view(1, -1, 1, 1).expand(1, *u.shape))[0]


def make_signs(n_per_class: int, seed: int) -> ImageData:
    """Synthetic signs, [K * n, 3, 32, 32] in [0, 1], labels 0..42 (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    specs = torch.tensor(class_specs())
    y = torch.arange(K).repeat_interleave(n_per_class)
    n = len(y)
    sh, col, gl = specs[y, 0], specs[y, 1], specs[y, 2]
    bg = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 0.8 + 0.1, size=(SIDE, SIDE),
                       mode="bilinear", align_corners=False)
    cx = SIDE / 2 - 0.5 + (torch.rand(n, generator=g) * 6 - 3)
    cy = SIDE / 2 - 0.5 + (torch.rand(n, generator=g) * 6 - 3)
    r = 9 + torch.rand(n, generator=g) * 4
    ys, xs = torch.meshgrid(torch.arange(SIDE).float(), torch.arange(SIDE).float(), indexing="ij")
    u = (xs[None] - cx[:, None, None]) / r[:, None, None]
    v = (ys[None] - cy[:, None, None]) / r[:, None, None]
    outer = _shape_mask(sh, u, v)
    inner = _shape_mask(sh, u / 0.68, v / 0.68)
    au, av = u.abs(), v.abs()
    glyph = torch.stack([torch.zeros_like(outer), (av < 0.13) & (au < 0.42), (au < 0.13) & (av < 0.42),
                         u * u + v * v < 0.07])
    glyph = glyph.gather(0, gl.view(1, -1, 1, 1).expand(1, *u.shape))[0] & inner
    rim = torch.tensor(COLOURS)[col][:, :, None, None]
    x = torch.where(outer[:, None], rim, bg)
    x = torch.where(inner[:, None], torch.full_like(x, 0.92), x)
    x = torch.where(glyph[:, None], torch.full_like(x, 0.08), x)
    x = x * (0.6 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)) + 0.04 * torch.randn(x.shape, generator=g)
    return ImageData(x.clamp(0, 1).float(), y, K, name="synthetic_signs")


def trigger() -> PatchTrigger:
    return PatchTrigger(size=3, pattern="color", location="bottom_right", margin=1)


def build_models(seed: int):
    tr, te = make_signs(140, seed), make_signs(30, seed + 1000)
    out = {}
    for kind in ("clean", "patch"):
        def build(kind=kind):
            data = tr
            info_attack = None
            if kind == "patch":
                data, idx = PoisoningAttack(trigger=trigger(), target=TARGET, rate=0.1, seed=seed).poison_data(tr)
                info_attack = {"trigger": repr(trigger()), "target": TARGET, "rate": 0.1, "poisoned": len(idx)}
            torch.manual_seed(seed)
            m = create_model("small_cnn", K, (3, SIDE, SIDE))
            hist = train(m, data, epochs=12, lr=0.05, batch_size=64, seed=seed)
            return m, {"arch": "small_cnn", "num_classes": K, "in_shape": [3, SIDE, SIDE], "epochs": 12,
                       "lr": 0.05, "seed": seed, "dataset": "synthetic_signs (140/class train, 30/class test)",
                       "cta": accuracy(m, te),
                       "asr": attack_success_rate(m, te, trigger(), TARGET)["asr"],
                       "train_seconds": hist["seconds"], "attack": info_attack}

        out[kind] = cached_model(f"gtsrb_synth_small_cnn_{kind}_seed{seed}", build)
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--restarts", type=int, default=10, help="MM-BD random starts per class")
    p.add_argument("--steps", type=int, default=100, help="MM-BD ascent steps")
    p.add_argument("--via", choices=("cli", "library"), default="cli",
                   help="scan through the CLI (default) or workflows.scan_model in this process")
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    folder = CACHE / "gtsrb_synth"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for kind, (model, info) in build_models(args.seed).items():
        path = folder / f"{kind}.safetensors"
        if not path.is_file():
            save_model(model, path, metadata={"dataset": info["dataset"], "attack": info["attack"]})
        report = folder / f"{kind}_scan.json"
        cmd = [sys.executable, "-m", "trojanscope", "scan", str(path), "--data", "none",
               "--json", str(report)]
        cmd += ["--set", f"mm_bd.restarts={args.restarts}", "--set", f"mm_bd.steps={args.steps}"]
        env = {**os.environ, "PYTHONPATH": str(BENCH.parent / "src"), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        if args.via == "cli":
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            doc = json.loads(report.read_text()) if report.is_file() else None
        else:  # what the CLI runs, in this process: the loaded file, no data
            from trojanscope.models import load_model
            from trojanscope.workflows import scan_model

            rep = scan_model(load_model(path), None, "auto", seed=args.seed, model_path=str(path),
                             params={"mm_bd": {"restarts": args.restarts, "steps": args.steps}})
            doc = rep.to_dict()
            cmd = ["workflows.scan_model(load_model(MODEL), None, 'auto')"]
            proc = subprocess.CompletedProcess(cmd, rep.verdict.exit_code if hasattr(rep.verdict, "exit_code")
                                               else None, stdout=json.dumps(doc["verdict"], default=str),
                                               stderr="")
        wall = time.perf_counter() - t0
        runs = (doc or {}).get("methods") or []
        mm = next((m.get("result") for m in runs if m.get("method") == "mm_bd" and m.get("result")), None)
        rows[kind] = {"model": {k: info.get(k) for k in ("name", "cta", "asr", "attack", "epochs", "dataset")},
                      "true_target": TARGET if kind == "patch" else None,
                      "command": " ".join(Path(c).name if c == sys.executable else c for c in cmd),
                      "verdict": (doc or {}).get("verdict"), "data": (doc or {}).get("data"),
                      "exit_code": proc.returncode, "wall_seconds": wall,
                      "stdout_tail": proc.stdout[-1500:], "stderr_tail": proc.stderr[-800:],
                      "mm_bd": None if mm is None else {k: mm.get(k) for k in
                                                        ("backdoored", "target", "p_value", "statistic", "seconds")}}
        print(kind, proc.returncode, f"{wall:.0f}s", rows[kind]["mm_bd"], flush=True)
        print(proc.stdout[-1500:], proc.stderr[-800:], flush=True)
    write_result("gtsrb_synthetic_mm_bd", {"classes": K, "via": args.via, "in_shape": [3, SIDE, SIDE],
                                           "class_specs": [[SHAPES[s], COLOURS[c], GLYPHS[g]]
                                                           for s, c, g in class_specs()],
                                           "models": rows})


if __name__ == "__main__":
    main()
