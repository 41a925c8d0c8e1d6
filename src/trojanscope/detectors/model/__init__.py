"""Post-training model scans. Importing this package registers the built-in detectors."""

from __future__ import annotations

from ..._registry import available, get
from ._base import ModelDetector, as_image_data, frozen

# Built-in detectors register themselves on import (one file per method).


def create_model_detector(name: str, **params: object) -> ModelDetector:
    return get("model_detector", name)(**params)


def model_detectors() -> list[str]:
    return available("model_detector")


__all__ = ["ModelDetector", "as_image_data", "create_model_detector", "frozen", "model_detectors"]
