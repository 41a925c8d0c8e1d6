"""Architecture registry (kind ``arch``). Every builder takes ``num_classes`` and ``in_shape``
(C, H, W) and returns a :class:`ConvNet`-shaped module.

One file per family; importing this package registers them all (``import_submodules``), so a new
architecture is one new file here.

Convention (relied on by introspection, pruning and feature-space detectors): a model has a
``features`` module (convolutional part) and a ``classifier`` ``nn.Sequential`` whose last layer
is the output ``nn.Linear``; the input of that last layer is the penultimate representation.
"""

from __future__ import annotations

from ..._registry import import_submodules
from ._base import ConvNet

__all__ = ["ConvNet"]

import_submodules(__name__)
