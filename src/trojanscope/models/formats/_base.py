"""What every model format implements, and the pieces the graph formats share.

A format is a class registered under the ``format`` kind (``trojanscope.available("format")``)
with its file ``suffixes``; :func:`trojanscope.models.save_model` / ``load_model`` pick one by
suffix (``.pt``/``.pth`` by looking inside) and call :meth:`ModelFormat.save` on a temporary
path or :meth:`ModelFormat.load`. One format per file in this package; adding a format is adding
a file.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import InputError, ModelFileError, TrojanscopeError
from ..wrap import Normalize


@dataclass
class SaveSpec:
    """What a writer knows: registry ``arch``, ``in_shape`` (C, H, W), normalisation."""

    arch: str | None
    in_shape: tuple[int, int, int] | None
    mean: Sequence[float] | None
    std: Sequence[float] | None


@dataclass
class LoadSpec:
    """What a reader is told: the validated sidecar and the caller's overrides."""

    side: dict[str, Any]
    arch: str | None
    num_classes: int | None
    in_shape: tuple[int, ...] | None
    module: str | None = None
    module_kwargs: dict[str, Any] | None = field(default=None)


@dataclass
class Loaded:
    """A reader's result: the network and what the file itself says about it."""

    net: nn.Module
    in_shape: tuple[int, ...] | None
    name: str | None
    forward_only: bool = False


class ModelFormat:
    """Base class of the formats (registry kind ``format``).

    Attributes:
        suffixes: file suffixes, the first one is written by :func:`save_model`.
        can_save: whether trojanscope writes this format.
        normalization_inside: a saved file takes [0, 1] input (mean/std are part of the graph).
    """

    suffixes: ClassVar[tuple[str, ...]] = ()
    can_save: ClassVar[bool] = True
    normalization_inside: ClassVar[bool] = False

    def save(self, net: nn.Module, tmp: Path, spec: SaveSpec) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, path: Path, spec: LoadSpec) -> Loaded:  # pragma: no cover - abstract
        raise NotImplementedError


class Exportable(nn.Module):
    """Normalisation + network in one plain module, so exported files take [0, 1] input."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.norm = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


def exportable(net: nn.Module, spec: SaveSpec, fmt: str) -> tuple[nn.Module, torch.Tensor]:
    """A CPU copy of ``net`` with its normalisation, and a seeded example input."""
    import copy

    if spec.in_shape is None:
        raise InputError(f"saving as {fmt} needs the input shape: pass in_shape=(C, H, W)")
    with warnings.catch_warnings():  # deep-copying a torch.export module warns (torch 2.13)
        warnings.simplefilter("ignore", FutureWarning)
        # exported on the CPU so that the file loads on any machine
        wrapped = Exportable(copy.deepcopy(net).cpu(), spec.mean, spec.std).eval()
    example = torch.rand(2, *spec.in_shape, generator=torch.Generator().manual_seed(0))
    return wrapped, example


@contextlib.contextmanager
def quiet_export(fmt: str):
    """Silence the exporters and turn their failures into one :class:`ModelFileError`."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    except TrojanscopeError:
        raise
    except Exception as e:
        raise ModelFileError(f"could not save the model as {fmt}: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
