"""Inference-time input detectors. Importing this package registers the built-in ones."""

from __future__ import annotations

from ..._registry import available, get, import_submodules
from ._base import InputDetector


def create_input_detector(name: str, **params: object) -> InputDetector:
    return get("input_detector", name)(**params)


def input_detectors() -> list[str]:
    return available("input_detector")


__all__ = ["InputDetector", "create_input_detector", "input_detectors"]

# One file per method; each registers itself on import.
import_submodules(__name__)
