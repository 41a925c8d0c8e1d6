"""Shared CLI pieces: console, options, data/model loading with friendly errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

# loading a model file with the data it is used with is library code (serve uses it too)
from ..models.with_data import (  # noqa: F401
    check_class_count,
    load_data,
    load_user_model,
    model_and_data,
    parse_mean_std,
)

# soft_wrap: log lines are never broken at 80 columns when the output is a pipe or a file
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataOpt = Annotated[str, typer.Option("--data", help="dataset name: digits, mnist, fashion_mnist, "
                                      "cifar10, gtsrb, folder:PATH or npz:PATH")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="folder holding the datasets "
                                                 "(default: $TROJANSCOPE_DATA)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto = CUDA when available)")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of every random choice")]


def parse_ints(text: str | None) -> list[int] | None:
    if text is None or text.strip() == "":
        return None
    from ..errors import InputError

    try:
        return [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}") from None


ModuleOpt = Annotated[str | None, typer.Option("--module", help="path/to/module.py:ClassName for a state-dict file")]
ArchOpt = Annotated[str | None, typer.Option("--arch", help="registry architecture of a state-dict file")]
NormalizeOpt = Annotated[str | None, typer.Option("--normalize", help="MEAN/STD the network expects "
                                                  "(default: from the sidecar)")]
