"""``trojanscope certify``: certified upper bound on the loss a poisoning attacker can cause.

Steinhardt, Koh & Liang (2017): sphere / slab sanitisation + linear SVM on pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import DataDirOpt, DataOpt, console, load_data, out, parse_ints


def _floats(text: str, what: str) -> list[float]:
    from ..errors import InputError

    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise InputError(f"{what}: give at least one value")
    return vals


def certify(
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    classes: Annotated[str, typer.Option("--classes", help="two classes (binary; the first is y=+1) "
                                         "or more (one-vs-rest, reported per class)")] = "1,7",
    eps: Annotated[str, typer.Option("--eps", help="poisoned fractions, comma-separated")] = "0,0.05,0.1,0.2,0.3",
    defense: Annotated[str, typer.Option("--defense", help="comma-separated: sphere, slab, both "
                                         "(= sphere+slab)")] = "sphere,slab,both",
    percentile: Annotated[float, typer.Option("--percentile", help="radii keep this %% of each clean class")] = 70.0,
    rho: Annotated[float | None, typer.Option("--rho", help="radius of the SVM parameter ball "
                                              "(default sqrt(0.8), the paper's MNIST-1-7 setting)")] = None,
    eta: Annotated[float, typer.Option("--eta", help="step size of Algorithm 1")] = 0.1,
    box: Annotated[bool, typer.Option("--box/--no-box", help="pixels stay in [0, 1] (needed by slab alone)")] = True,
    data_dependent: Annotated[bool, typer.Option("--data-dependent", help="also attack the data-dependent "
                                                 "sanitiser (centroids from clean + poisoned data)")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="use at most this many training images "
                                              "per class")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the bound-vs-eps figure (PNG)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of --limit's sample")] = 0,
) -> None:
    """Upper bound U*, candidate attack and its test loss/error vs eps for each defence."""
    from rich.table import Table

    from ..certify import DEFAULT_RHO, Certifier, canonical_defense
    from ..certify.plot import certificate_rows, plot_certificates
    from ..errors import InputError
    from ..utils import atomic_write_json

    cls = parse_ints(classes)
    if not cls or len(cls) < 2:
        raise InputError("--classes needs at least two classes, e.g. 1,7")
    eps_list = _floats(eps, "--eps")
    defenses = list(dict.fromkeys(canonical_defense(d) for d in defense.split(",") if d.strip()))
    if not defenses:
        raise InputError("--defense: give at least one of sphere, slab, both")
    train = load_data(data, "train", data_dir).of_classes(cls)
    test = load_data(data, "test", data_dir).of_classes(cls)
    if limit is not None:
        train = train.clean_subset(limit, seed=seed)
    certs = []
    with console.status("certifying") as status:
        for d in defenses:
            c = Certifier(defense=d, percentile=percentile, rho=rho or DEFAULT_RHO, eta=eta,
                          box=(0.0, 1.0) if box else None, data_dependent=data_dependent)
            certs += c.certify(train.x, train.y, eps_list, test.x, test.y, classes=cls,
                               callback=lambda s: status.update(s))

    table = Table(title=f"certified defence: {data} classes {','.join(map(str, cls))} (n={len(train)})")
    ovr = any(c.extra.get("class") is not None for c in certs)
    table.add_column("defense", no_wrap=True)
    for col in (["class"] if ovr else []) + ["eps", "U*", "lower", "atk loss", "atk err", "kept"]:
        table.add_column(col, justify="right")
    for c in certs:
        k = c.extra.get("class")
        pk = c.extra.get("poison_kept")
        table.add_row(c.defense.replace(" (data-dependent)", " (dd)"), *([str(k)] if ovr else []),
                      f"{c.eps:g}", f"{c.upper_bound:.4f}", f"{c.lower_bound:.4f}", f"{c.attack_loss:.4f}",
                      f"{c.attack_error:.4f}", "-" if pk is None else f"{pk:.2f}")
    table.caption = ("U*: certified bound on the training loss (Algorithm 1); lower: loss of the model "
                     "trained on clean + attack (Prop. 1); atk: the defender's test loss/error under the "
                     "candidate attack; kept: share of attack points the sanitiser keeps; (dd) = "
                     "data-dependent sanitiser, an estimate, not a certificate")
    out.print(table)
    if json_path is not None:
        atomic_write_json(json_path, {
            "schema": 1, "dataset": data, "classes": cls, "n_train": len(train), "n_test": len(test),
            "rows": certificate_rows(certs),
        })
        out.print(f"json: {json_path}")
    if plot is not None:
        plot_certificates(certs, plot, title=f"{data} classes {','.join(map(str, cls))}")
        out.print(f"plot: {plot}")


def register(app: typer.Typer) -> None:
    app.command("certify")(certify)
