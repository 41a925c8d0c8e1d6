"""The figure registry: method name -> function drawing that method's own figures.

Generic figures (the per-class statistic chart, reversed-trigger grids) need no registration:
they read the result's display metadata (``statistic_key``, ``threshold_on``, the trigger-key
convention of :class:`~trojanscope.types.ScanResult`). A method whose results deserve more
(bias maps: map grids, distance panels) registers a function here, from a module under
``report/`` — method classes know nothing of figures::

    @register_figures("bias_maps")
    def bias_map_figures(result: ScanResult) -> list[Figure]: ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..types import ScanResult

Figure = tuple[str, bytes]  # (caption, PNG bytes)
FigureFn = Callable[[ScanResult], list[Figure]]

_FIGURES: dict[str, FigureFn] = {}
# report modules that register figures when imported (loaded on first use: matplotlib is slow)
_BUILTIN = ("figures_bias",)
_loaded = False


def register_figures(method: str) -> Callable[[FigureFn], FigureFn]:
    """Decorator: ``@register_figures("lred") def f(result) -> [(caption, png), ...]``."""

    def deco(fn: FigureFn) -> FigureFn:
        _FIGURES[method] = fn
        return fn

    return deco


def unregister_figures(method: str) -> None:
    """Remove a registered figure function (tests, plugins)."""
    _FIGURES.pop(method, None)


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for mod in _BUILTIN:
            importlib.import_module(f"{__package__}.{mod}")
        _loaded = True


def registered() -> list[str]:
    """Methods with registered figures."""
    _load_builtin()
    return sorted(_FIGURES)


def method_figures(result: ScanResult) -> list[Figure]:
    """The figures registered for ``result.method`` ([] when none is)."""
    _load_builtin()
    fn = _FIGURES.get(result.method)
    return list(fn(result)) if fn is not None else []
