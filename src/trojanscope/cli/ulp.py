"""``trojanscope ulp train|eval``: learn Universal Litmus Patterns on a zoo, evaluate them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import SeedOpt, console, out
from ._isolate import DEFAULT_TIMEOUTS, isolated

ulp_app = typer.Typer(help="Universal Litmus Patterns (Kolouri et al. 2020): learn input "
                      "patterns on a model zoo, then scan with `scan --method ulp --ulp FILE`.",
                      no_args_is_help=True)


def train(
    zoo_dir: Annotated[Path, typer.Argument(help="zoo folder from `trojanscope zoo build`")],
    out_file: Annotated[Path, typer.Option("--out", help="ULP file to write (.safetensors)")],
    patterns: Annotated[int, typer.Option("--patterns", "-M", help="number of patterns M")] = 10,
    pooling: Annotated[str, typer.Option(help="concat | max | mean")] = "concat",
    raw_logits: Annotated[bool, typer.Option("--raw-logits", help="pool the raw logits as in "
                                             "the paper (default: sorted logits)")] = False,
    steps: Annotated[int, typer.Option(help="optimisation steps")] = 500,
    lr: Annotated[float, typer.Option(help="Adam step size of the patterns")] = 0.01,
    tv_weight: Annotated[float, typer.Option("--tv-weight", help="lambda of the total "
                                             "variation regulariser")] = 1e-5,
    dropout: Annotated[float, typer.Option(help="dropout inside the models (augmentation)")] = 0.1,
    noise: Annotated[bool, typer.Option("--noise-input", help="baseline: keep the random "
                                        "patterns, train only the classifier")] = False,
    png: Annotated[Path | None, typer.Option(help="PNG of the patterns and test ROC")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Learn M patterns + a classifier on the zoo's train split; report AUC on its test split
    (models with unseen triggers)."""
    import torch

    from ..detectors.model._ulp_train import plot_ulp, roc_summary
    from ..detectors.model.ulp import train_ulp
    from ..errors import InputError
    from ..zoo import load_zoo

    torch.set_num_threads(max(1, torch.get_num_threads()))
    zoo = load_zoo(zoo_dir)
    models, labels, rows = zoo.load("train")
    if not rows:
        raise InputError(f"{zoo_dir} has no finished train models")
    console.print(f"training on {len(models)} models ({int(labels.sum())} poisoned) ...")
    ulp = train_ulp(models, labels, num_classes=rows[0]["num_classes"],
                    in_shape=tuple(rows[0]["in_shape"]), dataset=zoo.spec.dataset,
                    n_patterns=patterns, pooling=pooling, sort_logits=not raw_logits,
                    steps=steps, lr=lr, tv_weight=tv_weight, model_dropout=dropout,
                    noise_input=noise, seed=seed,
                    progress=lambda d: console.print(f"  step {d['step']}: loss {d['loss']:.4f} "
                                                     f"acc {d['accuracy']:.1%}"))
    res = {"train": roc_summary(ulp.score_models(models), labels)}
    te_models, te_labels, te_rows = zoo.load("test")
    if te_rows and 0 < int(te_labels.sum()) < len(te_rows):
        te_scores = ulp.score_models(te_models)
        res["test"] = roc_summary(te_scores, te_labels)
        # the null distribution of P(poisoned) on held-out clean models: scan p-values use it
        ulp.info["clean_scores"] = [float(v) for v in te_scores[te_labels == 0]]
    ulp.info["zoo"] = str(zoo.root)
    ulp.info["auc"] = {k: v["auc"] for k, v in res.items()}
    ulp.save(out_file)
    for k, v in res.items():
        out.print(f"{k}: AUC {v['auc']:.3f}  accuracy@0.5 {v['accuracy_at_0.5']:.1%}  "
                  f"({v['n_clean']} clean, {v['n_poisoned']} poisoned)")
    if png is not None and "test" in res:
        plot_ulp(str(png), ulp.patterns, {"test": res["test"]}, title=f"ULP M={patterns}")
        out.print(f"figure: {png}")
    out.print(f"ULP file: {out_file}")


def evaluate(
    ulp_file: Annotated[Path, typer.Argument(help="ULP file")],
    zoo_dir: Annotated[Path, typer.Argument(help="zoo folder")],
    split: Annotated[str, typer.Option(help="train | test | all")] = "test",
    png: Annotated[Path | None, typer.Option(help="PNG of the patterns and the ROC curve")] = None,
) -> None:
    """ROC AUC of a ULP file on a zoo split."""
    from ..detectors.model._ulp_train import plot_ulp, roc_summary
    from ..detectors.model.ulp import load_ulp
    from ..errors import InputError
    from ..zoo import load_zoo

    ulp = load_ulp(ulp_file)
    zoo = load_zoo(zoo_dir)
    models, labels, rows = zoo.load(None if split == "all" else split)
    if not rows:
        raise InputError(f"no finished models in split {split!r} of {zoo_dir}")
    if tuple(rows[0]["in_shape"]) != tuple(ulp.in_shape):
        raise InputError(f"{ulp_file} takes input {tuple(ulp.in_shape)}, the zoo's models "
                         f"{tuple(rows[0]['in_shape'])}")
    r = roc_summary(ulp.score_models(models), labels)
    out.print(f"{split}: AUC {r['auc']:.3f}  accuracy@0.5 {r['accuracy_at_0.5']:.1%}  "
              f"({r['n_clean']} clean, {r['n_poisoned']} poisoned)")
    if png is not None:
        plot_ulp(str(png), ulp.patterns, {split: r}, title=f"{ulp_file.name} on {zoo_dir}")
        out.print(f"figure: {png}")


ulp_app.command("train")(isolated(train, timeout=DEFAULT_TIMEOUTS["ulp train"], name="ulp train"))
ulp_app.command("eval")(isolated(evaluate, timeout=DEFAULT_TIMEOUTS["ulp eval"], name="ulp eval"))


def register(app: typer.Typer) -> None:
    app.add_typer(ulp_app, name="ulp")
