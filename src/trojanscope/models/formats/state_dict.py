"""``torch.save(model.state_dict())`` files (``.pth``, or ``.pt`` holding a state dict).

Read with ``torch.load(weights_only=True)`` after every pickle in the archive passed the
restricted unpickler (:mod:`trojanscope.models._archive`); the network comes from ``--arch``
(registry) or ``--module file.py:Class`` (the user's own code, by their choice).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..._registry import register
from ...errors import ModelFileError
from .._archive import check_archive
from .._files import _build, _load_state, _read_state_dict
from .._reproducible import fix_serialization_id
from ._base import Loaded, LoadSpec, ModelFormat, SaveSpec


@register("format", "state_dict")
class StateDictFormat(ModelFormat):
    suffixes = (".pth", ".pt")

    def save(self, net: nn.Module, tmp: Path, spec: SaveSpec) -> None:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
        fix_serialization_id(tmp)

    def load(self, path: Path, spec: LoadSpec) -> Loaded:
        check_archive(path, "state_dict")
        state = _read_state_dict(path)
        if spec.module is None and spec.arch is None:
            raise ModelFileError(
                f"{path.name} holds only weights (a state dict); say which network they belong to: "
                "--module path/to/module.py:ClassName, or --arch NAME for a built-in architecture"
            )
        net = _build(path, spec.module, spec.arch, spec.num_classes, spec.in_shape, spec.module_kwargs)
        _load_state(net, state, path, spec.side)
        return Loaded(net, spec.in_shape, spec.arch)
