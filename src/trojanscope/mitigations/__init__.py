"""Backdoor mitigations (input filter, neuron pruning, unlearning). One file per method."""

from __future__ import annotations

from .._registry import import_submodules

import_submodules(__name__)
