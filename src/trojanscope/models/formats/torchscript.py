"""TorchScript ``.pt`` (normalisation inside). Its pickles are read by TorchScript's C++
unpickler, which cannot call Python; they are still scanned statically first. The scripted code
runs the model's own operators when called (hence the sandbox)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..._registry import register
from .._archive import check_archive
from .._files import _guard
from .._reproducible import fix_serialization_id
from ._base import Loaded, LoadSpec, ModelFormat, SaveSpec, exportable, quiet_export


@register("format", "torchscript")
class TorchScriptFormat(ModelFormat):
    suffixes = (".pt", ".pth")
    normalization_inside = True

    def save(self, net: nn.Module, tmp: Path, spec: SaveSpec) -> None:
        module, example = exportable(net, spec, "torchscript")
        with quiet_export("torchscript"):
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(tmp))
        fix_serialization_id(tmp)

    def load(self, path: Path, spec: LoadSpec) -> Loaded:
        check_archive(path, "torchscript")
        net = _guard(path, "a TorchScript file", lambda: torch.jit.load(str(path), map_location="cpu"))
        return Loaded(net, spec.in_shape, spec.arch if spec.side else "torchscript")
