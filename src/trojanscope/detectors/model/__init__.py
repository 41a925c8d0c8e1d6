"""Post-training model scans. Importing this package registers the built-in detectors."""

from __future__ import annotations

from ..._registry import available, get, import_submodules
from ._base import ModelDetector, as_image_data, frozen


def create_model_detector(name: str, **params: object) -> ModelDetector:
    return get("model_detector", name)(**params)


def model_detectors() -> list[str]:
    return available("model_detector")


__all__ = ["ModelDetector", "as_image_data", "create_model_detector", "frozen", "model_detectors"]

# One file per method; each registers itself on import.
import_submodules(__name__)
