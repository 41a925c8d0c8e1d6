"""trojanscope: find, explain and remove backdoors (Trojans) in image classifiers.

The public API is listed explicitly below; submodules hold the rest.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._registry import available, create, get, register
from .data import ImageData, load_dataset
from .errors import DataNotFoundError, InputError, ModelFileError, TrojanscopeError
from .types import Certificate, InputScores, MitigationResult, ScanResult
from .workflows import GuardReport, RepairReport, ScanReport, guard_inputs, repair_model, scan_model

__all__ = [
    "Certificate",
    "GuardReport",
    "DataNotFoundError",
    "ImageData",
    "InputError",
    "InputScores",
    "MitigationResult",
    "ModelFileError",
    "RepairReport",
    "ScanReport",
    "ScanResult",
    "TrojanscopeError",
    "__version__",
    "available",
    "create",
    "get",
    "guard_inputs",
    "load_dataset",
    "register",
    "repair_model",
    "scan_model",
]
