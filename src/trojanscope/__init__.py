"""trojanscope: find, explain and remove backdoors (Trojans) in image classifiers.

The public API is listed explicitly below; submodules hold the rest.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._registry import available, create, get, register
from .data import ImageData, load_dataset
from .errors import DataNotFoundError, InputError, ModelFileError, TrojanscopeError
from .types import Certificate, InputScores, MitigationResult, ScanResult

__all__ = [
    "Certificate",
    "DataNotFoundError",
    "ImageData",
    "InputError",
    "InputScores",
    "MitigationResult",
    "ModelFileError",
    "ScanResult",
    "TrojanscopeError",
    "__version__",
    "available",
    "create",
    "get",
    "load_dataset",
    "register",
]
