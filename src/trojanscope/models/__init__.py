"""Architectures (registry ``arch``), introspection, and model files."""

from __future__ import annotations

from torch import nn

from .._registry import available, get
from . import architectures
from .introspect import last_linear, named_layers, penultimate, record
from .io import load_model, save_model, sidecar_path
from .wrap import Normalize, WrappedModel, require_gradients, unwrap, wrap_model


def create_model(arch: str, num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Module:
    """Build a registered architecture (``available("arch")`` lists them).

    The model records its registry name in ``model.arch`` (written to model-file sidecars).
    """
    model = get("arch", arch)(num_classes=num_classes, in_shape=tuple(in_shape))
    model.arch = arch
    return model


def architectures_available() -> list[str]:
    return available("arch")


__all__ = ["Normalize", "WrappedModel", "architectures", "architectures_available", "create_model",
           "last_linear", "load_model", "named_layers", "penultimate", "record", "require_gradients",
           "save_model", "sidecar_path", "unwrap", "wrap_model"]
