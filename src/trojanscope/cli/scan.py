"""``trojanscope scan``: is this model backdoored? One verdict, an exit code that can gate CI.

A thin layer over :func:`trojanscope.workflows.scan_model`: load the model and the clean images
(the dataset defaults to the one recorded in the model's sidecar), run the sanity gate and every
applicable detector (``--method auto``), print the methods and the combined verdict, write the
reports. Exit status: 0 clean, 1 backdoored, 2 error, 3 inconclusive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..errors import InputError
from ._common import DataDirOpt, DeviceOpt, SeedOpt, console, load_user_model, model_and_data, out
from ._options import ConfigOpt, SetOpt, progress_reporter, settings

EXIT_CODES = {"clean": 0, "backdoored": 1, "inconclusive": 3}


def sidecar_dataset(model_path: Path) -> str | None:
    """The dataset recorded in the model's sidecar, or None (a missing or broken sidecar is the
    loader's business: it reports it)."""
    from ..models._files import sidecar_path

    try:
        side = json.loads(sidecar_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ds = side.get("dataset") if isinstance(side, dict) else None
    return ds if isinstance(ds, str) and ds and len(ds) < 200 else None


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def parse_in_shape(text: str | None) -> tuple[int, int, int] | None:
    """``--in-shape 3,32,32`` -> ``(3, 32, 32)``; None stays None."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--in-shape must be C,H,W (three integers), got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1 or max(shape) > 4096:
        raise InputError(f"--in-shape must be C,H,W (three positive integers), got {text!r}")
    return shape  # type: ignore[return-value]


def scan(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="model file (.safetensors, .pt2, "
                                               ".pt, .pth, .onnx)")],
    data: Annotated[str | None, typer.Option("--data", help="dataset of the clean images: digits, mnist, "
                                             "fashion_mnist, cifar10, gtsrb, folder:PATH, npz:PATH, or "
                                             "none (data-free methods only); default: the dataset "
                                             "recorded in the model's sidecar, else digits")] = None,
    data_dir: DataDirOpt = None,
    method: Annotated[str, typer.Option("--method", help="auto (every applicable detector) or "
                                        "comma-separated names; `trojanscope list methods`")] = "auto",
    n_per_class: Annotated[int, typer.Option("--n-per-class", help="clean images per class given to "
                                             "the detectors")] = 20,
    split: Annotated[str, typer.Option("--split", help="split the clean images come from")] = "train",
    alpha: Annotated[float, typer.Option("--alpha", help="significance level of the combined test")] = 0.05,
    rule: Annotated[str, typer.Option("--rule", help="combination of the methods' p-values: cauchy "
                                      "(Liu & Xie 2020) or holm; both valid for dependent methods")] = "cauchy",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the JSON report here")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="write the HTML report here")] = None,
    triggers_out: Annotated[Path | None, typer.Option("--save-triggers", metavar="DIR", help="write each "
                                                      "reversed trigger here (safetensors + PNG)")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    sets: SetOpt = None,
    config: ConfigOpt = None,
    ulp: Annotated[Path | None, typer.Option("--ulp", help="trained ULP file (adds ulp to auto when "
                                             "its input shape fits)")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="clean reference model file "
                                                   "(adds bias_maps to auto)")] = None,
    module: Annotated[str | None, typer.Option("--module", help="path/to/module.py:ClassName for a "
                                               "state-dict file")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="registry architecture of a state-dict file")] = None,
    normalize: Annotated[str | None, typer.Option("--normalize", help="MEAN/STD the network expects "
                                                  "(default: from the sidecar)")] = None,
    sanity_gate: Annotated[bool, typer.Option("--sanity-gate/--no-sanity-gate", help="check that the "
                                              "model classifies the scan images before any detector")] = True,
    in_shape: Annotated[str | None, typer.Option("--in-shape", metavar="C,H,W", help="with --data none: "
                                                 "the input shape, when the model file does not record it")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="with --data none: the class "
                                                    "count the model must return (default: probed)")] = None,
    layout: Annotated[str, typer.Option("--layout", help="memory layout of the weights during the scan: "
                                        "auto (channels-last for a CNN on a CPU: faster, same verdicts), "
                                        "channels_last or contiguous; the model file is never changed")] = "auto",
) -> None:
    """Is MODEL backdoored? Sanity gate, every applicable detector, one combined verdict.

    Exit status: 0 clean, 1 backdoored, 2 error, 3 inconclusive.
    """
    from .._registry import available
    from ..utils import resolve_device
    from ..workflows import scan_model

    if n_per_class < 1:
        raise InputError("--n-per-class must be >= 1")
    if not 0 < alpha < 1:
        raise InputError(f"--alpha must be in (0, 1), got {alpha}")
    from .._runtime import LAYOUTS

    if layout not in LAYOUTS:  # before the model is loaded
        raise InputError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    params = settings(sets, config, known=available("model_detector"), kind="model_detector")
    data_name = data or sidecar_dataset(model_path) or "digits"
    dev = resolve_device(device)
    shape = parse_in_shape(in_shape)
    if data_name != "none" and (shape is not None or num_classes is not None):
        raise InputError("--in-shape and --num-classes are for --data none (with data, both come from the images)")
    if data_name == "none":
        from ..models import load_model
        from ..models.with_data import parse_mean_std

        model = load_model(model_path, normalize=parse_mean_std(normalize), module=module, arch=arch,
                           in_shape=shape, device=dev)
        few = None
    else:
        model, (clean,) = model_and_data(model_path, data_name, data_dir, (split,), normalize=normalize,
                                         module=module, arch=arch, device=dev)
        few = clean.clean_subset(n_per_class, seed=seed)
    from ..utils import check_writable

    for path in (json_out, html_out):  # before any work: a report may not replace an input
        if path is not None:
            check_writable(path)
    ref = None
    if reference is not None:
        if few is None:
            raise InputError("--reference needs clean images (not --data none)")
        ref = load_user_model(reference, few, normalize=normalize, module=module, arch=arch, device=dev)

    for name in (method.split(",") if method.strip() != "auto" else []):
        from .._registry import get

        cls = get("model_detector", name.strip()) if name.strip() else None
        if cls is not None and getattr(cls, "experimental", None):
            console.print(f"[yellow]warning:[/] {cls.registry_name} is experimental: {escape(cls.experimental)}")

    n_img = 0 if few is None else len(few)
    what = "no data (data-free methods only)" if few is None else f"{n_img} clean {data_name} images"
    with progress_reporter(f"scanning {model_path.name} with {what} ({dev})") as prog:
        report = scan_model(model, few, method, params=params, reference=ref, ulp=ulp, alpha=alpha,
                            rule=rule, seed=seed, sanity=sanity_gate, model_path=str(model_path),
                            data_info={"name": data_name, "split": None if few is None else split,
                                       "n_per_class": n_per_class},
                            progress=prog, in_shape=shape, num_classes=num_classes, layout=layout)
    print_report(report, title=f"{model_path.name}: {what}"
                 + (f" ({split} split)" if few is not None else "") + f", {dev}")
    if json_out is not None or html_out is not None or triggers_out is not None:
        from ..report.outputs import write_scan_outputs

        rep = write_scan_outputs(report, model=model, clean=few, seed=seed, json_path=json_out,
                                 html_path=html_out, triggers_dir=triggers_out)
        for path in (json_out, html_out):
            if path is not None:
                out.print(f"wrote {path}")
        if triggers_out is not None:
            out.print(f"wrote {len(rep.get('trigger_files', []))} trigger files to {triggers_out}")
    raise typer.Exit(report.exit_code)


def print_report(report: Any, *, title: str) -> None:
    """The methods table, the sanity gate and the verdict (stdout)."""
    from rich import box
    from rich.table import Table

    gate = report.sanity
    if gate is not None:
        mark = "[green]passed[/]" if gate.passed else "[bold yellow]FAILED[/]"
        out.print(f"sanity gate {mark}: accuracy {gate.accuracy:.1%} on {gate.n_images} scan images "
                  f"(needs >= {gate.min_accuracy:.1%}"
                  + (f"; recorded {gate.recorded_accuracy:.1%}" if gate.recorded_accuracy is not None else "")
                  + ")")
    elif isinstance(report.data.get("sanity_gate"), str):  # no data: say what could not be checked
        out.print(f"sanity gate {escape(report.data['sanity_gate'])}")
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("method", "status", "says", "class", "stat", "thr", "p", "sec"):
        table.add_column(col, justify="left" if col in ("method", "status", "says") else "right",
                         no_wrap=col in ("method", "says"))
    for m in report.methods:
        r = m.result
        if r is None:
            table.add_row(m.method, m.status, escape(m.why or m.error or ""), "-", "-", "-", "-", "-")
            continue
        table.add_row(m.method, m.status, "[bold red]backdoored[/]" if r.backdoored else "[green]clean[/]",
                      "-" if m.candidate_target is None else str(m.candidate_target),
                      f"{r.statistic:.3g}", "-" if r.threshold is None else f"{r.threshold:.3g}",
                      _fmt_p(m.p_value), f"{r.seconds:.1f}")
    out.print(table)
    v = report.verdict
    colour = {"clean": "green", "backdoored": "bold red"}.get(v.verdict, "bold yellow")
    head = f"verdict: [{colour}]{v.verdict.upper()}[/]"
    if v.verdict == "backdoored" and v.target is not None:
        head += f", target class {v.target}" + (f" (sources {', '.join(map(str, v.sources))})" if v.sources else "")
    if v.p_value is not None:
        head += f", combined p = {_fmt_p(v.p_value)} ({v.rule})"
    out.print(head)
    out.print(f"  why: {escape(v.reason)}")
    for d in v.disagreeing:
        out.print(f"  disagrees: {escape(d['method'])}: {escape(d['why'])}")
    if v.hint:
        out.print(f"  hint: {escape(v.hint)}")


def register(app: typer.Typer) -> None:
    from ._isolate import DEFAULT_TIMEOUTS, isolated

    app.command("scan")(isolated(scan, timeout=DEFAULT_TIMEOUTS["scan"], name="scan"))
