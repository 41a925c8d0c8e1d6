"""``.pt2``: a ``torch.export`` program (normalisation inside, takes [0, 1] input).

Loading runs no pickle (every member torch would unpickle is checked first and torch.load is
forced to ``weights_only=True``), no guard code and no symbolic expression outside plain
arithmetic; the graph may only call torch operators. The graph does run the model's own
operators when called: that is why untrusted models run in the sandbox.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..._registry import register
from .._archive import check_archive, check_graph_targets, no_code_unpickling
from .._files import _export_in_shape, _guard
from .._reproducible import fix_serialization_id
from ..graph import freeze_modes
from ._base import Loaded, LoadSpec, ModelFormat, SaveSpec, exportable, quiet_export


@register("format", "export")
class ExportFormat(ModelFormat):
    suffixes = (".pt2",)
    normalization_inside = True

    def save(self, net: nn.Module, tmp: Path, spec: SaveSpec) -> None:
        module, example = exportable(net, spec, "export")
        with quiet_export("export"):
            batch = torch.export.Dim("batch", min=1)
            ep = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(ep, str(tmp))
        fix_serialization_id(tmp)

    def load(self, path: Path, spec: LoadSpec) -> Loaded:
        check_archive(path, "export")
        net = _guard(path, "a torch.export (.pt2) program", lambda: _load_export(path))
        # a program exported in training mode would use batch statistics and overwrite its
        # running statistics on every call (the load probe included): run it as inference
        net.frozen_train_modes = freeze_modes(net)  # type: ignore[union-attr]
        return Loaded(net, spec.in_shape or _export_in_shape(net), spec.arch if spec.side else "torch.export")


def _load_export(path: Path) -> nn.Module:
    with no_code_unpickling():
        ep = torch.export.load(str(path))
    check_graph_targets(path, ep.graph_module)
    return ep.module()
