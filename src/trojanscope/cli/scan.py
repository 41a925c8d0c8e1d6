"""``trojanscope scan``: is this model backdoored? Post-training detectors with a few clean images."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..errors import InputError
from ._common import (
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    SeedOpt,
    console,
    load_user_model,
    model_and_data,
    out,
)


def parse_sets(items: list[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``["neural_cleanse.epochs=50", "lred.variant=B"]`` -> ``{"neural_cleanse": {"epochs": 50}, ...}``."""
    from .train import parse_value

    params: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items or []:
        key, sep, value = item.partition("=")
        meth, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise InputError(f"--set must look like method.key=value, got {item!r}")
        if meth not in params:
            raise InputError(f"--set {item!r} names method {meth!r}, which is not in --method "
                             f"({', '.join(methods)})")
        params[meth][name.replace("-", "_")] = parse_value(value)
    return params


def _create(name: str, params: dict[str, Any]):
    from .._registry import get

    cls = get("model_detector", name)
    try:
        return cls(**params)
    except TypeError as e:  # an unknown --set key
        raise InputError(f"bad parameter for {name}: {e}") from None


def scan(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="model file (.safetensors, .pt2, "
                                               ".pt, .pth, .onnx)")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    method: Annotated[str, typer.Option("--method", help="comma-separated detectors, e.g. "
                                        "neural_cleanse,lred")] = "neural_cleanse",
    n_per_class: Annotated[int, typer.Option("--n-per-class", help="clean images per class given to "
                                             "the detectors")] = 20,
    split: Annotated[str, typer.Option("--split", help="split the clean images come from")] = "train",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the JSON report here")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="write the HTML report here")] = None,
    triggers_out: Annotated[Path | None, typer.Option("--save-triggers", metavar="DIR", help="write each "
                                                      "reversed trigger here (safetensors + PNG)")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    sets: Annotated[list[str] | None, typer.Option("--set", help="detector parameter method.key=value "
                                                   "(repeatable), e.g. neural_cleanse.epochs=50")] = None,
    ulp: Annotated[Path | None, typer.Option("--ulp", help="trained ULP detector file (for --method ulp)")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="clean reference model file "
                                                   "(for --method bias_maps)")] = None,
    module: Annotated[str | None, typer.Option("--module", help="path/to/module.py:ClassName for a "
                                               "state-dict file")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="registry architecture of a state-dict file")] = None,
    normalize: Annotated[str | None, typer.Option("--normalize", help="MEAN/STD the network expects "
                                                  "(default: from the sidecar)")] = None,
) -> None:
    """Scan MODEL with post-training detectors; print the verdicts, optionally write JSON/HTML."""
    from rich import box
    from rich.table import Table

    from .._registry import available, get
    from ..report.json_report import combined_verdict
    from ..utils import resolve_device

    methods = [m.strip() for m in method.split(",") if m.strip()]
    known = available("model_detector")
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise InputError(f"unknown --method {', '.join(bad) or '(none)'}; available: {', '.join(known)}")
    if n_per_class < 1:
        raise InputError("--n-per-class must be >= 1")
    params = parse_sets(sets, methods)
    for m in methods:  # --seed reaches every detector that takes one, unless --set overrides it
        if "seed" in inspect.signature(get("model_detector", m)).parameters:
            params[m].setdefault("seed", seed)
    if ulp is not None:
        if "ulp" not in methods:
            raise InputError("--ulp is for --method ulp")
        params["ulp"]["ulp_path"] = str(ulp)
    dev = resolve_device(device)
    model, (clean,) = model_and_data(model_path, data, data_dir, (split,), normalize=normalize,
                                     module=module, arch=arch, device=dev)
    if reference is not None:
        if "bias_maps" not in methods:
            raise InputError("--reference is for --method bias_maps")
        params["bias_maps"]["reference"] = load_user_model(reference, clean, normalize=normalize,
                                                           module=module, arch=arch, device=dev)
    few = clean.clean_subset(n_per_class, seed=seed)
    detectors = [_create(m, params[m]) for m in methods]  # bad parameters fail before any work
    for det in detectors:
        if getattr(det, "experimental", None):
            console.print(f"[yellow]warning:[/] {det.name} is experimental: {escape(det.experimental)}")

    results = []
    with console.status("scanning ...") as status:
        for det in detectors:
            def progress(p: dict[str, Any], name: str = det.name) -> None:
                if "epoch" in p:
                    status.update(f"{name}: epoch {p['epoch']}/{p.get('epochs', '?')}, "
                                  f"{p.get('active', '?')} candidates active")
                else:
                    status.update(f"{name} ...")

            status.update(f"{det.name} ...")
            r = det.scan(model, few, progress=progress)
            results.append(r)

    table = Table(title=f"{model_path.name}: {len(few)} clean {data} images ({split} split), {dev}",
                  box=box.SIMPLE_HEAD)
    for col in ("method", "verdict", "target", "sources", "stat", "thr", "p", "sec"):
        table.add_column(col, justify="left" if col in ("method", "verdict", "sources") else "right",
                         no_wrap=col in ("method", "verdict"))
    for r in results:
        table.add_row(r.method, "[bold red]BACKDOORED[/]" if r.backdoored else "[green]clean[/]",
                      "-" if r.target is None else str(r.target), ",".join(map(str, r.sources)) or "-",
                      f"{r.statistic:.3g}", "-" if r.threshold is None else f"{r.threshold:.3g}",
                      "-" if r.p_value is None else f"{r.p_value:.2g}", f"{r.seconds:.1f}")
    out.print(table)
    out.print("stat: the method's test statistic (Neural Cleanse: anomaly index; bias maps: the "
              "smaller of its two margins); thr: its decision threshold (applied to p where a "
              "p-value is shown)")
    comb = combined_verdict(results)
    out.print(f"verdict: {'[bold red]BACKDOORED[/]' if comb['backdoored'] else '[green]clean[/]'} "
              f"({comb['votes']} of {comb['methods']} methods)"
              + (f", target class {comb['target']}" if comb["target"] is not None else ""))
    if json_out is not None or html_out is not None or triggers_out is not None:
        from ..report.json_report import report_from_results
        from ..report.outputs import write_scan_outputs
        from ..workflows import describe_data, describe_model

        report = report_from_results(
            results, model=describe_model(model, model_path),
            data=describe_data(few, name=data, split=split),
            parameters={"device": str(dev), "seed": seed, "methods": methods})
        rep = write_scan_outputs(report, model=model, clean=few, seed=seed, json_path=json_out,
                                 html_path=html_out, triggers_dir=triggers_out)
        for path in (json_out, html_out):
            if path is not None:
                out.print(f"wrote {path}")
        if triggers_out is not None:
            out.print(f"wrote {len(rep.get('trigger_files', []))} trigger files to {triggers_out}")


def register(app: typer.Typer) -> None:
    from ._isolate import DEFAULT_TIMEOUTS, isolated

    app.command("scan")(isolated(scan, timeout=DEFAULT_TIMEOUTS["scan"], name="scan"))
