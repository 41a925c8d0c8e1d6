"""``.onnx`` graphs run with onnxruntime on the CPU: forward only (no gradients), normalisation
inside. onnxruntime parses the protobuf and runs only ONNX operators (no Python)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..._registry import register
from .._files import _OnnxModule
from ._base import Loaded, LoadSpec, ModelFormat, SaveSpec, exportable, quiet_export


@register("format", "onnx")
class OnnxFormat(ModelFormat):
    suffixes = (".onnx",)
    normalization_inside = True

    def save(self, net: nn.Module, tmp: Path, spec: SaveSpec) -> None:
        module, example = exportable(net, spec, "onnx")
        names = {"input_names": ["input"], "output_names": ["logits"]}
        with quiet_export("onnx"):
            try:  # the TorchScript-based exporter: fast and dependency-free
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=17,
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
            except Exception:  # the torch.export-based exporter (onnxscript)
                torch.onnx.export(module, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **names)

    def load(self, path: Path, spec: LoadSpec) -> Loaded:
        net = _OnnxModule(path)
        return Loaded(net, spec.in_shape or net.in_shape, spec.arch if spec.side else "onnx", forward_only=True)
