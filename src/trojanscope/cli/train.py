"""``trojanscope train``: train a clean or backdoored classifier and write a model file.

The attack options (``--attack``, ``--target``, ``--sources``, ``--attack-param k=v``) are shared
with ``trojanscope evaluate``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import DataDirOpt, DataOpt, DeviceOpt, SeedOpt, console, load_data, out, parse_ints
from ._options import conform, parse_value

AttackOpt = Annotated[str | None, typer.Option(
    "--attack", help="trigger name (badnets, ...: see trojanscope.attacks.triggers()); 'none' for no attack")]
TargetOpt = Annotated[int | None, typer.Option("--target", help="target class of the backdoor")]
SourcesOpt = Annotated[str | None, typer.Option(
    "--sources", help="comma-separated source classes (default: every class but the target)")]
AttackParamOpt = Annotated[list[str] | None, typer.Option(
    "--attack-param", help="trigger parameter k=v (repeatable), e.g. size=5, location=top_right, "
    "alpha=0.1, location=2,3")]


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["size=5", "location=top_right"]`` -> ``{"size": 5, "location": "top_right"}``."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--attack-param must look like key=value, got {item!r}")
        params[key.strip().replace("-", "_")] = parse_value(value)
    return params


def recorded_spec(recorded: dict[str, Any]) -> dict[str, Any]:
    """The attack a model's sidecar records, as :func:`attack_spec` gives it. Earlier versions
    recorded some ``--attack-param`` values as text (``"amplitude": "25/255"``): they are parsed
    here like the command line."""
    spec = {k: recorded.get(k) for k in ("name", "params", "target", "sources")}
    params = spec["params"] if isinstance(spec["params"], dict) else {}
    spec["params"] = {k: parse_value(v) if isinstance(v, str) else v for k, v in params.items()}
    return spec


def make_trigger(name: str, params: dict[str, Any], data=None):
    """Build a registered trigger with a clear error for a wrong parameter (checked here, before
    any data is poisoned).

    ``image=class:N`` (blend) stands for a bank of every image of class N in ``data`` (Borji exp.
    III: each poisoned input gets a random image of the target class), so a sidecar can record
    it and evaluation rebuilds it from its own split.
    """
    from .._registry import get

    image = params.get("image")
    if isinstance(image, str) and image.lower().startswith("class:"):
        try:
            cls = int(image.split(":", 1)[1])
        except ValueError:
            raise InputError(f"image={image!r}: expected class:N with an integer N") from None
        if data is None:
            raise InputError(f"image={image!r} needs a dataset to take the images from")
        if not 0 <= cls < data.num_classes or not bool((data.y == cls).any()):
            raise InputError(f"image={image!r}: the data has no images of class {cls}")
        params = {**params, "image": data.of_classes([cls]).x}
    cls = get("trigger", name)
    try:
        trig = cls(**conform(cls, params))
    except TypeError as e:
        raise InputError(f"trigger {name!r} does not take these parameters {sorted(params)}: {e}") from None
    trig.validate_params()
    return trig


def attack_spec(attack: str | None, target: int | None, sources: str | None,
                attack_param: list[str] | None, num_classes: int) -> dict[str, Any] | None:
    """Validate the attack options into ``{"name", "params", "target", "sources"}`` (None: no attack)."""
    if attack is None or attack.lower() == "none":
        if target is not None or attack_param:
            raise InputError("--target/--attack-param need --attack NAME")
        return None
    if target is None:
        raise InputError("--attack needs --target CLASS")
    if not 0 <= target < num_classes:
        raise InputError(f"--target {target} is out of range for {num_classes} classes")
    srcs = parse_ints(sources)
    for s in srcs or []:
        if not 0 <= s < num_classes:
            raise InputError(f"source class {s} is out of range for {num_classes} classes")
    if srcs is not None and all(s == target for s in srcs):
        raise InputError("--sources only holds the target class")
    return {"name": attack, "params": parse_params(attack_param), "target": target, "sources": srcs}


def evaluate_model(model, test, spec: dict[str, Any] | None) -> dict[str, Any]:
    """CTA on ``test`` and, with an attack, ASR overall and per source class."""
    from ..metrics import accuracy, attack_success_rate

    if test.num_classes > (getattr(model, "num_classes", None) or test.num_classes):
        raise InputError(f"the data has {test.num_classes} classes but the model {model.num_classes}")
    shape = getattr(model, "in_shape", None)
    if shape is not None and tuple(shape) != tuple(test.in_shape):
        raise InputError(f"the data has images of shape {tuple(test.in_shape)} but the model takes "
                         f"{tuple(shape)}")
    res: dict[str, Any] = {"cta": accuracy(model, test), "n_test": len(test)}
    if spec is not None:
        trig = make_trigger(spec["name"], spec["params"], test)
        asr = attack_success_rate(model, test, trig, spec["target"], spec["sources"])
        res.update(asr=asr["asr"], asr_per_source=asr["per_source"], trigger=repr(trig))
    return res


def print_metrics(res: dict[str, Any], spec: dict[str, Any] | None, title: str) -> None:
    from rich.table import Table

    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("clean test accuracy (CTA)", f"{res['cta']:.2%}")
    if spec is not None and res.get("asr") is not None:
        t.add_row(f"attack success rate (ASR) -> {spec['target']}", f"{res['asr']:.2%}")
        for c, v in sorted(res["asr_per_source"].items()):
            t.add_row(f"  ASR source {c}", f"{v:.2%}")
    out.print(t)


def parse_normalize(text: str | None, data) -> tuple[list[float], list[float]] | None:
    """``none`` | ``data`` (per-channel mean/std of the training images) | ``M1,M2,M3/S1,S2,S3``."""
    if text is None or text.lower() == "none":
        return None
    c = data.in_shape[0]
    if text.lower() == "data":
        x = data.x.transpose(0, 1).reshape(c, -1)
        return x.mean(1).tolist(), x.std(1).clamp_min(1e-6).tolist()
    try:
        m, s = text.split("/")
        mean, std = [float(v) for v in m.split(",")], [float(v) for v in s.split(",")]
    except ValueError:
        raise InputError(f"--normalize must be none, data or MEAN/STD like 0.5,0.5,0.5/0.25,0.25,0.25; "
                         f"got {text!r}") from None
    if len(mean) not in (1, c) or len(std) != len(mean):
        raise InputError(f"--normalize needs 1 or {c} values for mean and for std")
    return mean, std


def _init_model(path: Path, data, dev):
    """A model file to fine-tune: it must take gradients and match the data."""
    from ..models import load_model, require_gradients

    model = load_model(path, device=dev)
    require_gradients(model, "fine-tuning (--init)")
    if model.in_shape is not None and tuple(model.in_shape) != tuple(data.in_shape):
        raise InputError(f"--init model takes {tuple(model.in_shape)} images but the data has "
                         f"{tuple(data.in_shape)}")
    if (model.num_classes or 0) < data.num_classes:
        raise InputError(f"--init model has {model.num_classes} classes, the data {data.num_classes}")
    return model


def train_cmd(
    out_path: Annotated[Path, typer.Option("--out", help="model file to write: .safetensors (+ .json "
                                           "sidecar), .pt2, .pt (TorchScript), .pth or .onnx")],
    data: DataOpt = "digits",
    arch: Annotated[str, typer.Option("--arch", help="architecture (see trojanscope.available('arch'))")] = "small_cnn",
    data_dir: DataDirOpt = None,
    attack: AttackOpt = None,
    target: TargetOpt = None,
    sources: SourcesOpt = None,
    poison_count: Annotated[int | None, typer.Option("--poison-count", help="poisoned images in all")] = None,
    poison_rate: Annotated[float | None, typer.Option("--poison-rate", help="poisoned images as a fraction "
                                                       "of the training set")] = None,
    poison_per_source: Annotated[int | None, typer.Option("--poison-per-source", help="poisoned images "
                                                           "per source class")] = None,
    attack_param: AttackParamOpt = None,
    remove_originals: Annotated[bool, typer.Option("--remove-originals", help="replace the clean "
                                                    "originals of the poisoned images instead of adding copies")] = False,
    epochs: Annotated[float, typer.Option("--epochs", help="may be fractional")] = 1.0,
    lr: Annotated[float, typer.Option("--lr")] = 0.01,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd | adam")] = "sgd",
    schedule: Annotated[str, typer.Option("--schedule", help="none | cosine | step")] = "none",
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    crop: Annotated[int, typer.Option("--crop", help="random-crop padding in pixels (0 = off)")] = 0,
    flip: Annotated[bool, typer.Option("--flip", help="random horizontal flips")] = False,
    normalize: Annotated[str | None, typer.Option("--normalize", help="none | data | MEAN/STD, e.g. "
                                                  "0.49,0.48,0.45/0.25,0.24,0.26 (stored in the model)")] = None,
    init: Annotated[Path | None, typer.Option("--init", help="fine-tune this model file instead of "
                                              "training a new --arch from scratch")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train a classifier (optionally backdoored by data poisoning) and report CTA and ASR."""
    import time

    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..attacks import PoisoningAttack
    from ..models import create_model, save_model, sidecar_path, wrap_model
    from ..models.io import _format_of
    from ..train import train
    from ..utils import check_writable, resolve_device

    _format_of(out_path, for_saving=True)  # fail on a bad --out before training
    dev = resolve_device(device)
    train_d = load_data(data, "train", data_dir)
    test_d = load_data(data, "test", data_dir)
    spec = attack_spec(attack, target, sources, attack_param, train_d.num_classes)
    poison_info: dict[str, Any] = {}
    if spec is not None:
        given = sum(v is not None for v in (poison_count, poison_rate, poison_per_source))
        if given != 1:
            raise InputError("with --attack give exactly one of --poison-count, --poison-rate, "
                             "--poison-per-source")
        trig = make_trigger(spec["name"], spec["params"], train_d)
        atk = PoisoningAttack(trigger=trig, target=spec["target"], sources=spec["sources"], count=poison_count,
                              count_per_source=poison_per_source, rate=poison_rate,
                              remove_originals=remove_originals, seed=seed)
        train_d, idx = atk.poison_data(train_d)
        poison_info = {"poisoned": len(idx), "remove_originals": remove_originals}
        console.print(f"poisoned {len(idx)} training images with {trig!r} -> class {spec['target']}")
    elif any(v is not None for v in (poison_count, poison_rate, poison_per_source)):
        raise InputError("--poison-* options need --attack NAME")

    torch.manual_seed(seed)
    if init is not None:  # fine-tune a model file (Borji fine-tunes the clean model on the poison)
        if normalize is not None:
            raise InputError("--normalize sets up a new model; an --init model keeps its own normalisation")
        model = _init_model(init, train_d, dev)
        check_writable(out_path)  # before training: --out may not replace the --init model
        check_writable(sidecar_path(out_path))
        arch = model.arch or arch
    else:
        net = create_model(arch, train_d.num_classes, train_d.in_shape)
        norm = parse_normalize(normalize, train_d)
        model = wrap_model(net, mean=norm[0] if norm else None, std=norm[1] if norm else None,
                           num_classes=train_d.num_classes, in_shape=train_d.in_shape, arch=arch,
                           detect_probabilities=False).to(dev)
    console.print(f"training {arch} on {len(train_d)} {data} images ({dev}) for {epochs:g} epoch(s)"
                  + (f", starting from {init}" if init else ""))
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("train", total=1.0, info="")

        def step_progress(rec: dict[str, Any]) -> None:
            bar.update(task, completed=rec["step"] / rec["steps"],
                       info=f"epoch {rec['epoch']}/{math.ceil(epochs)} loss {rec['loss']:.4f}")

        def progress(rec: dict[str, Any]) -> None:
            bar.update(task, info=f"epoch {rec['epoch']}/{math.ceil(epochs)} loss {rec['loss']:.4f} "
                                  f"train acc {rec['accuracy']:.2%}")

        hist = train(model, train_d, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                     weight_decay=weight_decay, schedule=schedule, crop=crop, flip=flip, seed=seed,
                     progress=progress, step_progress=step_progress)
    res = evaluate_model(model, test_d, spec)
    print_metrics(res, spec, f"{arch} on {data} (test split, {res['n_test']} images)")
    meta: dict[str, Any] = {
        "dataset": data,
        "class_names": test_d.class_names,
        "metrics": {k: v for k, v in res.items() if k != "trigger"},
        "attack": None if spec is None else {**spec, **poison_info, "description": res.get("trigger")},
        "training": {"init": str(init) if init else None, "epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                     "schedule": schedule, "weight_decay": weight_decay, "crop": crop, "flip": flip,
                     "seed": seed, "train_images": len(train_d), "train_accuracy": hist["train_accuracy"],
                     "seconds": round(time.perf_counter() - t0, 2)},
    }
    save_model(model.cpu(), out_path, metadata=json.loads(json.dumps(meta, default=str)))
    out.print(f"wrote {out_path} (+ {sidecar_path(out_path).name})")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
