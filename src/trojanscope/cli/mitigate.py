"""``trojanscope mitigate``: remove a backdoor (Neural Cleanse sec. VI: filter, prune, unlearn)."""

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
    console,
    model_and_data,
    out,
)
from .train import AttackOpt, AttackParamOpt, SourcesOpt, TargetOpt, attack_spec, make_trigger


def mitigate(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="model file to repair (not modified)")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    method: Annotated[str, typer.Option("--method", help="filter | prune | unlearn")] = "unlearn",
    out_path: Annotated[Path | None, typer.Option("--out", help="repaired model file (.pt2 = torch.export "
                                                  "taking [0,1] input; .safetensors, .pt, .onnx, ...)")] = None,
    n_per_class: Annotated[int, typer.Option("--n-per-class", help="clean training images per class the "
                                             "defender uses")] = 100,
    scan_method: Annotated[str, typer.Option("--scan-method", help="detector run first to find the "
                                             "target and reversed trigger")] = "neural_cleanse",
    attack: AttackOpt = None,
    target: TargetOpt = None,
    sources: SourcesOpt = None,
    attack_param: AttackParamOpt = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="parameter key=value of the mitigation "
                                                   "(repeatable), e.g. stamp_fraction=0.2")] = None,
    scan_sets: Annotated[list[str] | None, typer.Option("--scan-set", help="parameter key=value of the "
                                                        "scan (repeatable), e.g. epochs=50")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
    module: ModuleOpt = None,
    arch: ArchOpt = None,
    normalize: NormalizeOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Remove a backdoor from MODEL (filter, prune or unlearn); prints CTA/ASR before and after.

    Neural Cleanse first finds the target and the reversed trigger. ASR is also measured with the
    true trigger when --attack gives it or the model's sidecar records it.
    """
    from .._registry import available, get
    from ..models import save_model, sidecar_path
    from ..report.json_report import SCHEMA
    from ..utils import atomic_write_json, check_writable, resolve_device, to_jsonable, versions
    from .train import parse_params

    if method not in available("mitigation"):
        raise InputError(f"unknown --method {method!r}; available: {', '.join(available('mitigation'))}")
    params: dict[str, Any] = {"seed": seed, "scan_method": scan_method,
                              "scan_params": {"seed": seed, **parse_params(scan_sets)}, **parse_params(sets)}
    try:
        mit = get("mitigation", method)(**params)
    except TypeError as e:
        raise InputError(f"bad parameter for {method}: {e}") from None
    dev = resolve_device(device)
    model, (train_d, test) = model_and_data(model_path, data, data_dir, ("train", "test"),
                                            normalize=normalize, module=module, arch=arch, device=dev)
    if out_path is not None:  # before any work: the repaired model may not replace its input
        check_writable(out_path)
        check_writable(sidecar_path(out_path))
    recorded = model.metadata.get("attack") if hasattr(model, "metadata") else None
    if attack is None and isinstance(recorded, dict) and recorded.get("name"):
        spec = {k: recorded.get(k) for k in ("name", "params", "target", "sources")}
        console.print(f"true trigger from the sidecar: {spec['name']} -> class {spec['target']}")
    else:
        spec = attack_spec(attack, target, sources, attack_param, train_d.num_classes)
    true_trigger = make_trigger(spec["name"], spec.get("params") or {}, test) if spec else None
    clean = train_d.clean_subset(n_per_class, seed=seed)

    with console.status(f"{method}: scanning and repairing ..."):
        res = mit.apply(model, clean, test=test, true_trigger=true_trigger)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2%}"

    out.print(f"{method} on {model_path.name} (target {res.extra['target']}, {res.seconds:.1f}s)")
    out.print(f"  CTA                 {pct(res.cta_before)} -> {pct(res.cta_after)}")
    out.print(f"  ASR reversed trigger {pct(res.asr_before)} -> {pct(res.asr_after)}")
    if true_trigger is not None:
        out.print(f"  ASR true trigger     {pct(res.asr_true_before)} -> {pct(res.asr_true_after)}")
    if res.pruned:
        out.print(f"  pruned/filter neurons: {len(res.pruned)}")
    if out_path is not None:
        save_model(res.model, out_path, metadata={"mitigation": to_jsonable(res.to_dict()),
                                                  "repaired_from": str(model_path)})
        out.print(f"wrote {out_path}")
    if json_out is not None:
        atomic_write_json(json_out, to_jsonable({"schema": SCHEMA, "model": str(model_path),
                                                 "result": res.to_dict(), "versions": versions()}))
        out.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("mitigate")(mitigate)
