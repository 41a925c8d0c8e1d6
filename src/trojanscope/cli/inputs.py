"""``trojanscope inputs``: flag suspect inputs (adversarial or triggered) before a model sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import (
    ArchOpt,
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    ModuleOpt,
    NormalizeOpt,
    SeedOpt,
    model_and_data,
    out,
)
from ._options import ConfigOpt, check_params, progress_reporter, settings

DEFAULT_METHODS = "mutation,activation_space,kde,lid"


def parse_params(items: list[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` items -> {method: {key: value}} for the named methods (the shared
    ``--set`` parser of :mod:`._options`; ``serve`` uses it too)."""
    params = settings(items, None, known=methods, kind="input_detector")
    return {m: params.get(m, {}) for m in methods}


def inputs_cmd(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="model file (.safetensors, .pt2, "
                                               ".pt, .pth, .onnx)")],
    suspect: Annotated[Path, typer.Option("--suspect", help="the inputs to check: a folder of images "
                                          "or an .npz with an `x` array (uint8 NHWC/NCHW or float [0,1])")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    method: Annotated[str, typer.Option("--method", help="comma-separated detectors: mutation, "
                                        "activation_space, kde, lid, uncertainty, squeeze, strip")] = DEFAULT_METHODS,
    fpr: Annotated[float, typer.Option("--fpr", help="target false-positive rate on clean inputs "
                                       "(of the guard as a whole: split over the methods)")] = 0.05,
    per_method_fpr: Annotated[bool, typer.Option("--per-method-fpr", help="calibrate every method at "
                                                 "--fpr instead of splitting it over the methods")] = False,
    n_clean: Annotated[int, typer.Option("--n-clean", help="clean reference images per class, from "
                                         "the dataset's training split")] = 200,
    param: Annotated[list[str] | None, typer.Option("--set", "--param", metavar="METHOD.KEY=VALUE",
                                                    help="a detector parameter (repeatable), e.g. "
                                                    "mutation.n_mutants=50 (--param: old name)")] = None,
    config: ConfigOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write scores and flags to this JSON file")] = None,
    module: ModuleOpt = None,
    arch: ArchOpt = None,
    normalize: NormalizeOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Score every suspect input with input detectors calibrated on clean training images."""
    from rich.table import Table

    from .._registry import names as registry_names
    from ..data.files import load_images
    from ..utils import atomic_write_json, resolve_device
    from ..workflows import guard_inputs

    methods = registry_names("input_detector", method, what="--method")
    params = settings(param, config, known=methods, kind="input_detector")
    for m in list(params):  # settings name only methods in --method (checked above)
        check_params("input_detector", {m: params[m]})
    params = {m: params.get(m, {}) for m in methods}
    dev = resolve_device(device)
    model, (train,) = model_and_data(model_path, data, data_dir, ("train",), normalize=normalize,
                                     module=module, arch=arch, device=dev)
    x, names = load_images(suspect, size=tuple(train.in_shape[1:]))
    if x.shape[1] != train.in_shape[0]:
        if x.shape[1] == 3 and train.in_shape[0] == 1:
            x = x.mean(1, keepdim=True)  # RGB files of a grey-scale task
        else:
            raise InputError(f"suspect images have {x.shape[1]} channels but {data} has {train.in_shape[0]}")
    clean = train.clean_subset(n_clean, seed=seed)
    with progress_reporter(f"fitting {len(methods)} detectors on {len(clean)} clean images, scoring "
                           f"{len(x)} suspect inputs") as prog:
        rep = guard_inputs(model, clean, x, methods, params=params, fpr=fpr, split_fpr=not per_method_fpr,
                           seed=seed, inputs=names, model_path=model_path,
                           data_info={"name": data, "split": "train"}, progress=prog)
    per_fpr = rep.parameters["per_method_fpr"]

    table = Table(title=f"{suspect.name}: {len(x)} inputs, clean reference {len(clean)} {data} training images")
    for col in ("method", "FPR target", "threshold", "flagged", "ms / input"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rep.results:
        f = r.flags
        table.add_row(r.method, f"{per_fpr[r.method]:.3g}", f"{r.threshold:.4g}",
                      f"{int(f.sum())} ({float(f.float().mean()):.1%})", f"{1000 * r.seconds / len(x):.2f}")
    out.print(table)
    out.print(f"flagged by at least one method: {int(rep.flagged.sum())} of {len(x)} "
              f"({float(rep.flagged.float().mean()):.1%})")
    if len(x) <= 20:
        per = Table(title="per input")
        per.add_column("input")
        per.add_column("label", justify="right")
        for m in methods:
            per.add_column(m, justify="right")
        for i, n in enumerate(names):
            per.add_row(n, str(int(rep.labels[i])), *[
                f"{float(r.scores[i]):.3g}" + (" [red]FLAG[/]" if bool(r.flags[i]) else "") for r in rep.results])
        out.print(per)
    if json_out is not None:  # report/schemas/inputs-report.schema.json
        atomic_write_json(json_out, {**rep.to_dict(), "suspect": str(suspect)})
        out.print(f"wrote {json_out}")
    raise typer.Exit(rep.exit_code)  # 1 = some input flagged


def register(app: typer.Typer) -> None:
    from ._isolate import DEFAULT_TIMEOUTS, isolated

    app.command("inputs")(isolated(inputs_cmd, timeout=DEFAULT_TIMEOUTS["inputs"], name="inputs"))
