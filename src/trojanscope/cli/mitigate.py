"""``trojanscope mitigate``: remove a backdoor (Neural Cleanse sec. VI: filter, prune, unlearn).

Exit status: 0 repaired (and written, and the written file re-checked); 1 the backdoor still
works after the repair (the model stays flagged; nothing written); 3 refused: the repair would
cost more clean accuracy than ``--max-cta-drop`` (or broke the weights) with every fallback, so
the tool cannot stand behind a repaired model (inconclusive; nothing written); 2 error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
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
from ._options import ConfigOpt, mitigation_settings
from .train import (
    AttackOpt,
    AttackParamOpt,
    SourcesOpt,
    TargetOpt,
    attack_spec,
    make_trigger,
    recorded_spec,
)


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
    config: ConfigOpt = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="METHOD.KEY=VALUE: a parameter of the "
                                                   "mitigation (e.g. unlearn.epochs=5) or of the scan run "
                                                   "first (e.g. neural_cleanse.epochs=50); bare key=value: "
                                                   "the mitigation's (repeatable)")] = None,
    scan_sets: Annotated[list[str] | None, typer.Option("--scan-set", help="parameter key=value of the "
                                                        "scan (repeatable), e.g. epochs=50")] = None,
    max_cta_drop: Annotated[float, typer.Option("--max-cta-drop", help="utility budget: the most clean "
                                                "accuracy (percentage points, on held-out images) the "
                                                "repair may cost; over it, gentler settings are tried, "
                                                "then the model is not written (exit 3)")] = 2.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
    module: ModuleOpt = None,
    arch: ArchOpt = None,
    normalize: NormalizeOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Remove a backdoor from MODEL (filter, prune or unlearn); prints CTA/ASR before and after.

    Neural Cleanse first finds the target and the reversed trigger. ASR is also measured with the
    true trigger when --attack gives it or the model's sidecar records it. The repaired model is
    written only when the repair worked within the CTA budget; exit 0 repaired, 1 backdoor still
    works, 3 refused (over the budget), 2 error.
    """
    code = run_mitigate(model_path=model_path, data=data, data_dir=data_dir, method=method, out_path=out_path,
                        n_per_class=n_per_class, scan_method=scan_method, attack=attack, target=target,
                        sources=sources, attack_param=attack_param, sets=sets, config=config, scan_sets=scan_sets,
                        max_cta_drop=max_cta_drop, json_out=json_out, module=module, arch=arch,
                        normalize=normalize, device=device, seed=seed)
    if code:
        raise typer.Exit(code)


def run_mitigate(*, model_path: Path, data: str, data_dir: Path | None, method: str, out_path: Path | None,
                 n_per_class: int, scan_method: str, attack, target, sources, attack_param,
                 sets: list[str] | None, config: Path | None, scan_sets: list[str] | None, max_cta_drop: float,
                 json_out: Path | None, module, arch, normalize, device: str, seed: int) -> int:
    """The body of ``trojanscope mitigate``; returns the exit status."""
    from .._registry import available
    from ..models import sidecar_path
    from ..utils import atomic_write_json, check_writable, resolve_device, to_jsonable
    from ..workflows import build_mitigation, repair_model
    from .train import parse_params

    if method not in available("mitigation"):
        raise InputError(f"unknown --method {method!r}; available: {', '.join(available('mitigation'))}")
    if not 0 <= max_cta_drop <= 100:
        raise InputError(f"--max-cta-drop is in percentage points, 0 to 100; got {max_cta_drop}")
    mit_sets, scan_from_sets = mitigation_settings(sets, config, mitigation=method, scan_method=scan_method)
    params: dict[str, Any] = {"seed": seed, "scan_method": scan_method, "max_cta_drop": max_cta_drop / 100,
                              "scan_params": {"seed": seed, **scan_from_sets, **parse_params(scan_sets)},
                              **mit_sets}
    mit = build_mitigation(method, params)  # settings checked before anything is loaded
    if out_path is not None and out_path.resolve() == model_path.resolve():
        raise InputError("--out must not be the input model file (the input is never overwritten)")
    dev = resolve_device(device)
    model, (train_d, test) = model_and_data(model_path, data, data_dir, ("train", "test"),
                                            normalize=normalize, module=module, arch=arch, device=dev)
    if out_path is not None:  # before any work: the repaired model may not replace its input
        check_writable(out_path)
        check_writable(sidecar_path(out_path))
    recorded = model.metadata.get("attack") if hasattr(model, "metadata") else None
    if attack is None and isinstance(recorded, dict) and recorded.get("name"):
        spec = recorded_spec(recorded)
        console.print(f"true trigger from the sidecar: {spec['name']} -> class {spec['target']}")
    else:
        spec = attack_spec(attack, target, sources, attack_param, train_d.num_classes)
    true_trigger = make_trigger(spec["name"], spec.get("params") or {}, test) if spec else None
    clean = train_d.clean_subset(n_per_class, seed=seed)

    with console.status(f"{method}: scanning and repairing ..."):
        rep = repair_model(model, clean, mit, test=test, true_trigger=true_trigger, model_path=model_path,
                           data_info={"name": data, "split": "train"})
    res = rep.result

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2%}"

    out.print(f"{method} on {model_path.name} (target {res.extra['target']}, {res.seconds:.1f}s)")
    out.print(f"  CTA                 {pct(res.cta_before)} -> {pct(res.cta_after)}  "
              f"(held-out {data} test images; budget -{max_cta_drop:g} points)")
    out.print(f"  ASR reversed trigger {pct(res.asr_before)} -> {pct(res.asr_after)}")
    if true_trigger is not None:
        out.print(f"  ASR true trigger     {pct(res.asr_true_before)} -> {pct(res.asr_true_after)}")
    if res.pruned:
        out.print(f"  pruned/filter neurons: {len(res.pruned)}")
    for note in res.extra.get("model_notes", []):
        out.print(f"  note: {note}")
    if len(res.extra.get("attempts", [])) > 1:
        tried = "; ".join(f"{a['params'] or 'as set'}: CTA {pct(a['cta_after'])}" for a in res.extra["attempts"])
        out.print(f"  attempts: {tried}")
    out.print(f"verdict: {res.verdict}: {res.reason}")
    result = res.to_dict()
    if out_path is not None:
        if res.verdict == "repaired":
            result["reloaded"] = write_and_check(mit, res, out_path, model_path, test, true_trigger)
            r = result["reloaded"]
            out.print(f"wrote {out_path} (reloaded: CTA {pct(r['cta'])}, ASR reversed {pct(r['asr'])}"
                      + (f", ASR true {pct(r['asr_true'])}" if true_trigger is not None else "") + ")")
        else:
            out.print(f"not written: {out_path} (the repair was {res.verdict})")
    if json_out is not None:
        doc = rep.to_dict()  # report/schemas/repair-report.schema.json
        doc["result"] = to_jsonable(result)  # with "reloaded"
        atomic_write_json(json_out, doc)
        out.print(f"wrote {json_out}")
    return rep.exit_code


def write_and_check(mit, res, out_path: Path, model_path: Path, test, true_trigger) -> dict[str, Any]:
    """Save the repaired model, load the file back (it must take batches of 1 and 3) and measure
    CTA/ASR again with the same evaluator; a file that does not give the same numbers is an error."""
    from ..errors import ModelFileError
    from ..models import load_model, save_model
    from ..utils import to_jsonable

    save_model(res.model, out_path, metadata={"mitigation": to_jsonable(res.to_dict()),
                                              "repaired_from": str(model_path)})
    kw: dict[str, Any] = {"in_shape": tuple(test.in_shape), "device": test.x.device}
    if callable(getattr(res.model, "saveable", None)):  # the input filter: rebuild it with its flags
        from ..mitigations.input_filter import FilteredModel

        back = FilteredModel.load(out_path, **kw)
    else:
        back = load_model(out_path, **kw)
    for n in (1, 3):
        with torch.no_grad():
            got = back(test.x[:n])
        if got.shape[0] != n:
            raise ModelFileError(f"{out_path.name}: the written model does not take a batch of {n}")
    again = mit._evaluate(back, test, res.extra["target"], {"asr": mit.reversed_trigger_, "asr_true": true_trigger})
    for key, want in (("cta", res.cta_after), ("asr", res.asr_after), ("asr_true", res.asr_true_after)):
        if want is not None and again[key] is not None and abs(again[key] - want) > 0.005:
            raise ModelFileError(f"{out_path.name}: the written model gives {key} {again[key]:.2%}, the repaired "
                                 f"one {want:.2%}; the file is not a faithful copy")
    return again


def register(app: typer.Typer) -> None:
    from ._isolate import DEFAULT_TIMEOUTS, isolated

    app.command("mitigate")(isolated(mitigate, timeout=DEFAULT_TIMEOUTS["mitigate"], name="mitigate"))
