"""``--timeout`` and ``--max-memory`` for every command that loads or runs a user's model: the
command's body runs in an isolated child process (:mod:`trojanscope.sandbox`).

``isolated(command, timeout=600)`` returns the command with the two options added to its
signature; register that instead of the bare function. The whole body runs in the child (loading,
running, writing its files atomically, printing through the parent), so a command needs no other
change. ``$TROJANSCOPE_NO_SANDBOX=1`` runs it in-process (debugging and the overhead benchmark).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

# default wall-clock limits (seconds) of the isolated commands
DEFAULT_TIMEOUTS = {"evaluate": 600, "inputs": 1800, "scan": 3600, "mitigate": 3600,
                    "ulp train": 4 * 3600, "ulp eval": 1800}


def _limit_kind(device: Any) -> str:
    """RLIMIT_AS on CPU; RLIMIT_DATA where CUDA may start (its driver maps huge address ranges)."""
    import torch

    if torch.version.cuda is None or str(device) == "cpu":
        return "as"
    return "data"


def isolated(fn: Callable[..., Any], *, timeout: float, name: str | None = None) -> Callable[..., Any]:
    """``fn`` with ``--timeout`` (default ``timeout`` s) and ``--max-memory``, run in a child."""
    from ..sandbox import parse_memory, run_isolated

    label = name or fn.__name__

    @functools.wraps(fn)
    def wrapper(*, timeout: float, max_memory: str, **kwargs: Any) -> Any:
        if os.environ.get("TROJANSCOPE_NO_SANDBOX", "") not in ("", "0"):
            return fn(**kwargs)
        if not timeout >= 0:
            from ..errors import InputError

            raise InputError(f"--timeout must be >= 0 seconds (0 = no limit), got {timeout}")
        mem = parse_memory(max_memory)
        model = kwargs.get("model_path")
        what = getattr(model, "name", None) or f"trojanscope {label}"
        run_isolated(fn, kwargs, timeout=timeout or None, max_memory=mem,
                     limit_kind=_limit_kind(kwargs.get("device", "auto")), what=what)

    sig = inspect.signature(fn, eval_str=True)
    extra = [
        inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, default=float(timeout), annotation=Annotated[
            float, typer.Option("--timeout", help="wall-clock limit in seconds for the work on the model, "
                                "run in an isolated process; 0 = none", rich_help_panel="Limits")]),
        inspect.Parameter("max_memory", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=Annotated[
            str, typer.Option("--max-memory", help="memory limit of that process, e.g. 8G or 512M; 0 = none; "
                              "auto = 3/4 of the machine's RAM", rich_help_panel="Limits")]),
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
    wrapper.__signature__ = sig.replace(parameters=params + extra)  # type: ignore[attr-defined]
    # typer reads get_type_hints(): evaluated annotations, since the wrapper's globals differ
    wrapper.__annotations__ = {p.name: p.annotation for p in params + extra
                               if p.annotation is not inspect.Parameter.empty}
    if sig.return_annotation is not inspect.Signature.empty:
        wrapper.__annotations__["return"] = sig.return_annotation
    wrapper.__sandbox_target__ = fn  # type: ignore[attr-defined]
    wrapper.__sandbox_name__ = (fn.__module__, fn.__qualname__)  # type: ignore[attr-defined]
    del wrapper.__wrapped__  # typer must read __signature__, not the wrapped function's
    return wrapper
