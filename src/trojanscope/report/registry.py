"""The figure registry: method name -> function drawing that method's own figures.

Generic figures (the per-class statistic chart, reversed-trigger grids) need no registration:
they read the result's display metadata (``statistic_key``, ``threshold_on``, the trigger-key
convention of :class:`~trojanscope.types.ScanResult`). A method whose results deserve more
(bias maps: map grids, distance panels) has a function here, written in a module under
``report/`` — method classes know nothing of figures. Plugins add theirs with::

    @register_figures("my_method")
    def my_figures(result: ScanResult) -> list[Figure]: ...
"""

from __future__ import annotations

from collections.abc import Callable

from ..types import ScanResult
from . import figures_bias
from .figures import Figure, class_statistic_figure, trigger_figures

FigureFn = Callable[[ScanResult], list[Figure]]

_FIGURES: dict[str, FigureFn] = {
    "bias_maps": figures_bias.result_figures,  # Borji: map grids, distances, Algorithm II grid
}


def register_figures(method: str) -> Callable[[FigureFn], FigureFn]:
    """Decorator: ``@register_figures("lred") def f(result) -> [(caption, png), ...]``."""

    def deco(fn: FigureFn) -> FigureFn:
        _FIGURES[method] = fn
        return fn

    return deco


def unregister_figures(method: str) -> None:
    """Remove a registered figure function (tests, plugins)."""
    _FIGURES.pop(method, None)


def registered() -> list[str]:
    """Methods with registered figures."""
    return sorted(_FIGURES)


def method_figures(result: ScanResult) -> list[Figure]:
    """The figures registered for ``result.method`` ([] when none is)."""
    fn = _FIGURES.get(result.method)
    return list(fn(result)) if fn is not None else []


def all_figures(result: ScanResult) -> list[Figure]:
    """Every figure of one result: per-class statistic chart, trigger grids, method figures."""
    figs = [f for f in (class_statistic_figure(result),) if f is not None]
    return figs + trigger_figures(result) + method_figures(result)
