"""``trojanscope zoo build|info``: train many clean and poisoned models for ULP meta-training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import DataDirOpt, DataOpt, SeedOpt, console, out

zoo_app = typer.Typer(help="Model zoos: many clean and backdoored models of one task.",
                      no_args_is_help=True)


@zoo_app.command("build")
def build(
    out_dir: Annotated[Path, typer.Option("--out", help="zoo folder (resumes when it exists)")],
    data: DataOpt = "mnist",
    data_dir: DataDirOpt = None,
    size: Annotated[int | None, typer.Option(help="image side for resizable datasets (digits)")] = None,
    n_clean: Annotated[int, typer.Option("--n-clean", help="clean models")] = 100,
    n_poisoned: Annotated[int, typer.Option("--n-poisoned", help="poisoned models")] = 100,
    arch: Annotated[str, typer.Option(help="architecture, or a comma-separated list to draw "
                                      "from at random")] = "small_cnn",
    poison_ratio: Annotated[float, typer.Option("--poison-ratio", help="poisoned / clean "
                                                "source images (paper: 0.5)")] = 0.5,
    sources: Annotated[str, typer.Option(help="one (random source class) | all")] = "one",
    trigger_size: Annotated[int, typer.Option("--trigger-size")] = 5,
    train_subset: Annotated[int | None, typer.Option("--train-subset", help="train each model "
                                                     "on this many random images")] = None,
    eval_subset: Annotated[int | None, typer.Option("--eval-subset", help="measure CTA/ASR on "
                                                    "this many random test images")] = None,
    epochs: Annotated[float, typer.Option()] = 1.0,
    lr: Annotated[float, typer.Option()] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    min_cta: Annotated[float, typer.Option("--min-cta", help="mark models below this clean "
                                           "accuracy")] = 0.8,
    min_asr: Annotated[float, typer.Option("--min-asr", help="mark poisoned models below this "
                                           "attack success rate")] = 0.9,
    workers: Annotated[int, typer.Option(help="parallel workers, one torch thread each "
                                         "(0 = in this process)")] = 2,
    executor: Annotated[str, typer.Option(help="local | ray (RAY_ADDRESS joins a cluster)")] = "local",
    seed: SeedOpt = 0,
) -> None:
    """Train N clean and N poisoned models with random triggers, corners and source->target pairs."""
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..zoo import ZooSpec, build_zoo

    root = None if data_dir is None and data == "digits" else str(
        data_dir or os.environ.get("TROJANSCOPE_DATA") or "") or None
    spec = ZooSpec(dataset=data, data_root=root, size=size,
                   archs=tuple(a.strip() for a in arch.split(",") if a.strip()),
                   n_clean=n_clean, n_poisoned=n_poisoned, poison_ratio=poison_ratio,
                   sources=sources, trigger_size=trigger_size, train_subset=train_subset,
                   eval_subset=eval_subset,
                   epochs=epochs, lr=lr, batch_size=batch_size, min_cta=min_cta,
                   min_asr=min_asr, seed=seed)
    with Progress(TextColumn("[bold]zoo"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                  TextColumn("ETA {task.fields[eta]}"), console=console) as bar:
        task = bar.add_task("zoo", total=n_clean + n_poisoned, rate="", eta="?")

        def cb(d: dict) -> None:
            eta = d["eta_s"]
            bar.update(task, completed=d["done"], rate=f"{d['models_per_hour']:.0f} models/h",
                       eta="-" if eta is None else f"{eta / 60:.1f} min")
            r = d["row"]
            if r["status"] != "ok":
                console.print(f"[yellow]{r['name']}: {r['status']} (CTA {r['cta']:.1%}, "
                              f"ASR {r['asr'] if r['asr'] is None else format(r['asr'], '.1%')})")

        zoo = build_zoo(out_dir, spec, workers=workers, executor=executor, progress=cb)
    _summary(zoo)


@zoo_app.command("info")
def info(zoo_dir: Annotated[Path, typer.Argument(help="zoo folder")]) -> None:
    """Counts per split and status, mean CTA and ASR."""
    from ..zoo import load_zoo

    _summary(load_zoo(zoo_dir))


def _summary(zoo) -> None:
    from rich.table import Table

    t = Table(title=f"zoo {zoo.root}")
    for c in ("split", "kind", "ok", "failed", "mean CTA", "mean ASR"):
        t.add_column(c)
    for split in ("train", "test"):
        for kind in (False, True):
            rows = [r for r in zoo.rows if r["split"] == split and r["poisoned"] == kind]
            ok = [r for r in rows if r["status"] == "ok"]
            cta = sum(r["cta"] for r in ok) / len(ok) if ok else float("nan")
            asr = sum(r["asr"] for r in ok) / len(ok) if ok and kind else None
            t.add_row(split, "poisoned" if kind else "clean", str(len(ok)), str(len(rows) - len(ok)),
                      f"{cta:.1%}", "-" if asr is None else f"{asr:.1%}")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
