"""Model file formats, one per file (registry kind ``format``)."""

from __future__ import annotations

from ..._registry import get, import_submodules
from ._base import Loaded, LoadSpec, ModelFormat, SaveSpec

import_submodules(__name__)


def format_named(name: str) -> ModelFormat:
    """An instance of the registered format ``name``."""
    return get("format", name)()


__all__ = ["LoadSpec", "Loaded", "ModelFormat", "SaveSpec", "format_named"]
