"""Register by name, create through a factory.

The CLI, the benchmarks and the common tests enumerate these registries, so a method is
covered by the common tests the day it is registered (the pattern of timm's ``_registry.py``).

Kinds used in the package: ``arch`` (architectures), ``dataset``, ``trigger``,
``model_detector``, ``input_detector``, ``mitigation``, ``evasion``, ``format`` (model files).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InputError

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}

# Modules whose import registers the built-in entries of a kind; imported lazily so that
# ``import trojanscope`` stays cheap and a broken optional method cannot break the rest.
_PROVIDERS: dict[str, tuple[str, ...]] = {
    "arch": ("trojanscope.models.architectures",),
    "dataset": ("trojanscope.data",),
    "trigger": ("trojanscope.attacks",),
    "evasion": ("trojanscope.attacks",),
    "model_detector": ("trojanscope.detectors.model",),
    "input_detector": ("trojanscope.detectors.input",),
    "mitigation": ("trojanscope.mitigations",),
    "format": ("trojanscope.models.formats",),
}


def import_submodules(package: str) -> None:
    """Import every public module of ``package`` so that their ``@register`` decorators run.

    Packages of methods call this in their ``__init__``: adding a method is adding one file.
    """
    import pkgutil

    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class/function decorator: ``@register("model_detector", "neural_cleanse")``.

    Args:
        kind: the registry kind (``model_detector``, ``input_detector``, ``mitigation``,
            ``trigger``, ``evasion``, ``arch``, ``dataset``, ...).
        name: the name users pass (``--method NAME``, ``create(kind, NAME)``).
    """

    def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise InputError(f"{kind} {name!r} is registered twice")
        table[name] = obj
        obj.registry_name = name  # type: ignore[attr-defined]
        return obj

    return deco


def _load(kind: str) -> dict[str, Callable[..., Any]]:
    for mod in _PROVIDERS.get(kind, ()):
        importlib.import_module(mod)
    return _REGISTRY.get(kind, {})


def available(kind: str) -> list[str]:
    """Sorted names registered under ``kind``.

    Args:
        kind: the registry kind.
    """
    return sorted(_load(kind))


def get(kind: str, name: str) -> Callable[..., Any]:
    """The registered class or function, with a clear error listing the valid names.

    Args:
        kind: the registry kind.
        name: the registered name.
    """
    table = _load(kind)
    if name not in table:
        valid = ", ".join(sorted(table)) or "(none)"
        raise InputError(f"unknown {kind.replace('_', ' ')} {name!r}; available: {valid}")
    return table[name]


def check_params(kind: str, name: str, params: Mapping[str, Any]) -> None:
    """A clear error for a parameter that the entry ``name`` of ``kind`` does not take.

    Raises:
        InputError: naming the unknown parameters and listing the entry's parameters.
    """
    sig = inspect.signature(get(kind, name))
    bad = [k for k in params if k not in sig.parameters]
    if bad:
        raise InputError(f"{name} has no parameter {', '.join(map(repr, bad))}; its parameters: "
                         f"{', '.join(sig.parameters)}")


def names(kind: str, value: str | Sequence[str], *, what: str | None = None) -> list[str]:
    """Registry names of ``kind`` from a comma-separated string or a list, in the order given.

    Args:
        kind: the registry kind, e.g. ``"input_detector"``.
        value: ``"kde,lid"`` or ``["kde", "lid"]``.
        what: how the error names the value (e.g. ``"--method"``; default: the kind).

    Raises:
        InputError: a name that is not registered, or no name at all (listing what is).
    """
    items = [m.strip() for m in value.split(",") if m.strip()] if isinstance(value, str) else list(value)
    known = available(kind)
    bad = [m for m in items if m not in known]
    if bad or not items:
        raise InputError(f"unknown {what or kind.replace('_', ' ')} {', '.join(bad) or '(none)'}; "
                         f"available: {', '.join(known)}")
    return items


def create(kind: str, name: str, **params: Any) -> Any:
    """Instantiate the entry ``name`` of ``kind`` with keyword parameters.

    Args:
        kind: the registry kind.
        name: the registered name.
        **params: the entry's parameters.
    """
    return get(kind, name)(**params)
