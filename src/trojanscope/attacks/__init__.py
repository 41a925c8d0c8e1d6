"""Poisoning attacks (triggers + poisoner) and the evasion attacks detectors use."""

from __future__ import annotations

from .._registry import available, get, import_submodules
from ._base import PoisoningAttack, Trigger
from ._evasion_base import EvasionAttack
from .additive import AdditiveTrigger
from .blend import BlendTrigger, MultiplyTrigger
from .evasion import BIM, FGSM, IFGSM, PGD, CarliniWagnerL2
from .mask_pattern import MaskPatternTrigger
from .patch import PatchTrigger, free_positions, make_pattern


def create_trigger(name: str, **params: object) -> Trigger:
    """Build a registered trigger (``available("trigger")`` lists them)."""
    return get("trigger", name)(**params)


def triggers() -> list[str]:
    return available("trigger")


def create_evasion(name: str, **params: object) -> EvasionAttack:
    """Build a registered evasion attack (``available("evasion")``: fgsm, bim, pgd, cw, ...)."""
    return get("evasion", name)(**params)


__all__ = ["BIM", "FGSM", "IFGSM", "PGD", "AdditiveTrigger", "BlendTrigger", "CarliniWagnerL2",
           "EvasionAttack", "MaskPatternTrigger", "MultiplyTrigger", "PatchTrigger", "PoisoningAttack",
           "Trigger", "create_evasion", "create_trigger", "free_positions", "make_pattern", "triggers"]

# Every trigger / evasion module registers itself on import.
import_submodules(__name__)
