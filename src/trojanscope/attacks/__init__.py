"""Poisoning attacks (triggers + poisoner) and the evasion attacks detectors use."""

from __future__ import annotations

from .._registry import available, get, import_submodules
from ._base import PoisoningAttack, Trigger
from .patch import PatchTrigger, make_pattern


def create_trigger(name: str, **params: object) -> Trigger:
    """Build a registered trigger (``available("trigger")`` lists them)."""
    return get("trigger", name)(**params)


def triggers() -> list[str]:
    return available("trigger")


__all__ = ["PatchTrigger", "PoisoningAttack", "Trigger", "create_trigger", "make_pattern", "triggers"]

# Every trigger / evasion module registers itself on import.
import_submodules(__name__)
