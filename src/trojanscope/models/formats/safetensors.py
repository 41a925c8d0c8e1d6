"""``.safetensors`` weights + JSON sidecar, rebuilt from the architecture registry.

The safest format: tensors only, no pickle and no graph; the network is a registry
architecture named by the sidecar (built on the meta device until the weights fit it).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..._registry import register
from ...errors import InputError
from .._files import _build, _is_registered, _load_state, _read_safetensors
from .._reproducible import sort_safetensors_header
from .._sidecar import SIDECAR_FORMAT
from ._base import Loaded, LoadSpec, ModelFormat, SaveSpec


@register("format", "safetensors")
class SafetensorsFormat(ModelFormat):
    suffixes = (".safetensors",)

    def save(self, net: nn.Module, tmp: Path, spec: SaveSpec) -> None:
        if spec.arch is None or not _is_registered(spec.arch):
            raise InputError(
                "a .safetensors file is rebuilt from the architecture registry, but this model has no "
                "registered architecture name (build it with create_model(...)); save it as .pt2 instead"
            )
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp), metadata={"format": SIDECAR_FORMAT, "arch": spec.arch})
        sort_safetensors_header(tmp)  # byte-reproducible: the header order is random otherwise

    def load(self, path: Path, spec: LoadSpec) -> Loaded:
        net = _build(path, spec.module, spec.arch, spec.num_classes, spec.in_shape, spec.module_kwargs)
        _load_state(net, _read_safetensors(path), path, spec.side)
        return Loaded(net, spec.in_shape, spec.arch)
