"""Architectures (registry ``arch``), introspection, and model files."""

from __future__ import annotations

from .._registry import available, get
from . import architectures
from .introspect import last_linear, named_layers, penultimate, record


def create_model(arch: str, num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 28, 28)):
    """Build a registered architecture (``available("arch")`` lists them)."""
    return get("arch", arch)(num_classes=num_classes, in_shape=tuple(in_shape))


def architectures_available() -> list[str]:
    return available("arch")


__all__ = ["architectures", "architectures_available", "create_model", "last_linear", "named_layers",
           "penultimate", "record"]
