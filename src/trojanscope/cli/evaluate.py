"""``trojanscope evaluate``: clean test accuracy and attack success rate of a model file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import (
    ArchOpt,
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    ModuleOpt,
    NormalizeOpt,
    check_class_count,
    console,
    load_data,
    load_user_model,
    out,
)
from .train import (
    AttackOpt,
    AttackParamOpt,
    SourcesOpt,
    TargetOpt,
    attack_spec,
    evaluate_model,
    print_metrics,
    recorded_spec,
)


def evaluate_cmd(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="model file (.safetensors, .pt2, "
                                               ".pt, .pth, .onnx)")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option("--split", help="dataset split to evaluate on")] = "test",
    attack: AttackOpt = None,
    target: TargetOpt = None,
    sources: SourcesOpt = None,
    attack_param: AttackParamOpt = None,
    module: ModuleOpt = None,
    arch: ArchOpt = None,
    normalize: NormalizeOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the metrics to this JSON file")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Print CTA (and ASR with an attack) of MODEL; without --attack the sidecar's attack is used."""
    from ..utils import atomic_write_json, resolve_device, to_jsonable

    dev = resolve_device(device)
    test = load_data(data, split, data_dir)
    model = load_user_model(model_path, test, normalize=normalize, module=module, arch=arch, device=dev)
    check_class_count(model, test, model_path, data)
    spec: dict[str, Any] | None
    recorded = model.metadata.get("attack")
    if attack is None and target is None and isinstance(recorded, dict) and recorded.get("name"):
        spec = recorded_spec(recorded)
        console.print(f"attack from the sidecar: {spec['name']} {spec['params']} -> class {spec['target']}")
    else:
        spec = attack_spec(attack, target, sources, attack_param, test.num_classes)
    res = evaluate_model(model, test, spec)
    print_metrics(res, spec, f"{model_path.name} on {data} ({split} split, {res['n_test']} images)")
    if json_out is not None:
        atomic_write_json(json_out, to_jsonable({"model": str(model_path), "dataset": data, "split": split,
                                                 "attack": spec, **res}))
        out.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    from ._isolate import DEFAULT_TIMEOUTS, isolated

    app.command("evaluate")(isolated(evaluate_cmd, timeout=DEFAULT_TIMEOUTS["evaluate"], name="evaluate"))
