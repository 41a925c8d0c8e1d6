"""The estimator convention shared by detectors and mitigations (scikit-learn's ``get_params``),
and the declarative parameter checks they share (scikit-learn's parameter-constraints pattern).

Constructor parameters are stored under their own names; learned state ends in ``_``. A method
declares what each parameter may be in the class attribute ``parameter_constraints``; the base
classes call :meth:`Configurable.validate_params` before any work, so every method refuses a bad
value the same way, with one message format::

    neural_cleanse: batch_size must be an int >= 1, got 0

A parameter's list of constraints allows a value that ANY of them allows; ``None`` in the list
allows None. Checks that depend on several parameters or on the data (e.g. the number of
classes) stay in the method and run after :meth:`~Configurable.validate_params`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from numbers import Integral, Real
from pathlib import PurePath
from typing import Any, ClassVar, Literal

from .errors import InputError

__all__ = ["Boolean", "Configurable", "Constraint", "FilePath", "InstanceOf", "Interval", "Options", "Pair"]


class Constraint:
    """One kind of value a parameter may take: :meth:`allows` it, and :meth:`describe` says what."""

    def allows(self, value: Any) -> bool:
        """Whether ``value`` satisfies this constraint."""
        raise NotImplementedError

    def describe(self) -> str:
        """The allowed values in words, as they follow "must be" (e.g. ``an int >= 1``)."""
        raise NotImplementedError

    def brief(self) -> str:
        """A short form for listings (``trojanscope list``), e.g. ``> 0`` or ``one of A, U``."""
        return self.describe()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


Closed = Literal["both", "left", "right", "neither"]


class Interval(Constraint):
    """A finite ``int`` or real number between ``lo`` and ``hi`` (None = unbounded).

    ``closed`` says which ends are included. ``Interval(int, ...)`` takes integers only (not
    2.0, not True); ``Interval(float, ...)`` takes any finite real number (ints too, not bools).

    Args:
        kind: ``int`` or ``float``.
        lo: the lower end (None: no lower bound).
        hi: the upper end (None: no upper bound).
        closed: ``"both"`` (default), ``"left"``, ``"right"`` or ``"neither"``.
        allow_inf: also allow ``+inf`` (floats with no upper bound only; e.g. an unbounded
            perturbation budget).
    """

    def __init__(self, kind: type[int] | type[float], lo: float | None, hi: float | None, *,
                 closed: Closed = "both", allow_inf: bool = False) -> None:
        if kind not in (int, float):
            raise TypeError(f"Interval takes int or float, not {kind!r}")
        if allow_inf and (kind is int or hi is not None):
            raise TypeError("allow_inf needs a float Interval without an upper end")
        self.kind, self.lo, self.hi, self.closed = kind, lo, hi, closed
        self.allow_inf = allow_inf

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        v = float(value)
        if self.allow_inf and v == math.inf:
            return True
        if not math.isfinite(v):
            return False
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.lo is not None and (v < self.lo or (v == self.lo and not left)):
            return False
        return not (self.hi is not None and (v > self.hi or (v == self.hi and not right)))

    def _range(self) -> str:
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.lo is not None and self.hi is not None:
            return f"in {'[' if left else '('}{self.lo:g}, {self.hi:g}{']' if right else ')'}"
        if self.lo is not None:
            return f"{'>=' if left else '>'} {self.lo:g}"
        if self.hi is not None:
            return f"{'<=' if right else '<'} {self.hi:g}"
        return ""

    def describe(self) -> str:
        what = "an int" if self.kind is int else "a number"
        rng = self._range()
        return (f"{what} {rng}" if rng else what) + (" or inf" if self.allow_inf else "")

    def brief(self) -> str:
        rng = self._range()
        if self.kind is int:
            return f"int {rng}" if rng else "int"
        return (rng or "number") + (" or inf" if self.allow_inf else "")


class Options(Constraint):
    """One of a fixed set of values, e.g. ``Options(("adam", "sgd"))``.

    Args:
        values: the allowed values (the message lists them in this order).
        normalize: applied to a value before the comparison, for spellings the method itself
            accepts (e.g. ``str.upper`` when ``"ii"`` means ``"II"``).
    """

    def __init__(self, values: Iterable[Any], *, normalize: Callable[[Any], Any] | None = None) -> None:
        self.values = tuple(values)
        self.normalize = normalize

    def allows(self, value: Any) -> bool:
        try:
            v = self.normalize(value) if self.normalize is not None else value
        except Exception:  # a value the normaliser cannot handle is not one of the options
            return False
        # type as well as equality: True == 1 and 1.0 == 1, but neither is the option 1
        return any(isinstance(v, type(o)) and isinstance(v, bool) == isinstance(o, bool) and v == o
                   for o in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))

    def brief(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)


class Boolean(Constraint):
    """``True`` or ``False`` (not 0/1, not a string)."""

    def allows(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"

    def brief(self) -> str:
        return "true/false"


class InstanceOf(Constraint):
    """An instance of one of ``types``, e.g. ``InstanceOf(nn.Module, what="a torch.nn.Module")``.

    Args:
        types: the accepted classes.
        what: how the message names them (default: ``a <class name>``).
    """

    def __init__(self, *types: type, what: str | None = None) -> None:
        self.types = types
        self.what = what or " or ".join(f"a {t.__name__}" for t in types)

    def allows(self, value: Any) -> bool:
        return isinstance(value, self.types)

    def describe(self) -> str:
        return self.what


class FilePath(Constraint):
    """A path (``str`` or :class:`os.PathLike`) whose name ends in one of ``suffixes``.

    Only the name is checked here: whether the file exists and what it holds is found out when
    the method reads it (a parameter check never touches the disk).

    Args:
        suffixes: the accepted endings, e.g. ``(".png", ".npy")`` (case-insensitive).
        what: how the message names such a file (default: ``a .png/.npy file``).
    """

    def __init__(self, suffixes: Iterable[str], *, what: str | None = None) -> None:
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.what = what or "a " + "/".join(self.suffixes) + " file"

    def allows(self, value: Any) -> bool:
        if not isinstance(value, (str, os.PathLike)):
            return False
        try:
            return PurePath(value).suffix.lower() in self.suffixes
        except TypeError:  # a PathLike that gives bytes
            return False

    def describe(self) -> str:
        return self.what


class Pair(Constraint):
    """A tuple or list of two values that ``item`` allows, e.g. a ``(row, col)`` pixel position.

    Args:
        item: the constraint each of the two values must meet.
        what: how the message names the pair (default: ``a pair``).
    """

    def __init__(self, item: Constraint, *, what: str = "a pair") -> None:
        self.item, self.what = item, what

    def allows(self, value: Any) -> bool:
        return isinstance(value, (tuple, list)) and len(value) == 2 and all(map(self.item.allows, value))

    def describe(self) -> str:
        return f"{self.what}, each {self.item.describe()}"

    def brief(self) -> str:
        return f"{self.what.removeprefix('a ')}, each {self.item.brief()}"


def _describe(constraints: list[Constraint | None]) -> str:
    return " or ".join("None" if c is None else c.describe() for c in constraints)


def describe_briefly(constraints: list[Constraint | None]) -> str:
    """The allowed values of one parameter in short: ``> 0``, ``int >= 1 or None``, or with ``|``
    between alternatives that list values themselves (``one of A, U | None``)."""
    parts = ["None" if c is None else c.brief() for c in constraints]
    return (" | " if any("," in p for p in parts) else " or ").join(parts)


def _short_repr(value: Any, limit: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


class Configurable:
    """``get_params()`` (the constructor parameters, recorded in every report), ``name`` and
    :meth:`validate_params`.

    ``name`` is the registry name, or the class name for an unregistered subclass.
    ``parameter_constraints`` maps a parameter name to the constraints its value must meet (any
    of them; ``None`` in the list allows None); a class's table adds to those of its base
    classes (a mixin may declare the parameters it uses). Parameters without an entry are not
    checked.
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters by name (learned state, ending in ``_``, left out)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__)

    @classmethod
    def all_parameter_constraints(cls) -> dict[str, list[Constraint | None]]:
        """``parameter_constraints`` of this class and its bases (the subclass's entry wins)."""
        out: dict[str, list[Constraint | None]] = {}
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("parameter_constraints", {}))
        return out

    def validate_params(self) -> None:
        """Check every constrained parameter; the base classes call this before any work.

        Raises:
            InputError: ``"<method>: <param> must be <allowed>, got <value>"`` for the first
                parameter (in declaration order) that no constraint of its list allows.
        """
        for param, constraints in self.all_parameter_constraints().items():
            value = getattr(self, param)
            if any(value is None if c is None else c.allows(value) for c in constraints):
                continue
            raise InputError(f"{self.name}: {param} must be {_describe(constraints)}, "
                             f"got {_short_repr(value)}")

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                       if not hasattr(v, "state_dict"))  # a reference model would print pages
        return f"{type(self).__name__}({ps})"
