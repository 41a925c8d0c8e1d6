"""Reading the ``Args:`` section of a Google-style docstring (shared by the contract tests)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any


def documented_params(obj: type | Callable[..., Any]) -> set[str] | None:
    """Names in the ``Args:`` section; ``a, b: ...`` documents both (this code base's style).

    For a class, the docstrings of the class that defines ``__init__`` and of that ``__init__``
    are read. None when there is no ``Args:`` section.
    """
    if inspect.isclass(obj):
        owner = next(c for c in obj.__mro__ if "__init__" in vars(c))
        text = inspect.cleandoc(owner.__doc__ or "") + "\n" + inspect.cleandoc(owner.__init__.__doc__ or "")
    else:
        text = inspect.cleandoc(obj.__doc__ or "")
    section = re.search(r"^(?:Args|Arguments|Parameters):[ \t]*\n(.*?)(?=^\S|\Z)", text, re.M | re.S)
    if section is None:
        return None
    names: set[str] = set()
    for line in section.group(1).splitlines():
        entry = re.match(r"^ {4}(\w[\w, ]*?)\s*(?:\([^)]*\))?:", line)
        if entry:
            names |= {n.strip() for n in entry.group(1).split(",")}
    return names


def signature_params(obj: type | Callable[..., Any]) -> set[str]:
    """The parameters a caller passes (no ``self``, no ``*args``/``**kwargs``)."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    return {
        n for n, p in inspect.signature(fn).parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
