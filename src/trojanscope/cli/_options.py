"""Options shared by the commands: one ``--set METHOD.KEY=VALUE`` syntax, ``--config FILE.toml``
for the same settings, and progress output (rich on a terminal, timestamped lines otherwise).

Settings file (TOML): one table per method, the same keys as ``--set``::

    # scan.toml
    [neural_cleanse]
    epochs = 50
    init_cost = 1e-3

    [lred]
    n_per_class = 4

``--set`` wins over the file. Values on the command line are parsed once, here (the library
takes typed values and checks them against each method's ``parameter_constraints``): ``5`` -> 5,
``0.1`` -> 0.1, ``25/255`` -> 0.098..., ``true``/``false``, ``none``, ``1,2`` or ``(1, 2)`` ->
[1, 2], anything else a string.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="METHOD.KEY=VALUE",
    help="a method parameter (repeatable), e.g. neural_cleanse.epochs=50; `trojanscope list` "
         "shows every parameter and its default")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", metavar="FILE.toml", help="method parameters from a TOML file: one [method] table "
                                          "each (--set wins)")]


def parse_value(text: str) -> Any:
    """``5`` -> 5, ``0.1`` -> 0.1, ``25/255`` -> 25 / 255, ``true`` -> True, ``none`` -> None,
    ``1,2`` / ``(1, 2)`` / ``[1, 2]`` -> [1, 2], else the text (a name, a file path)."""
    t = text.strip()
    if len(t) >= 2 and t[0] in "([" and t[-1] in ")]" and "," in t:
        t = t[1:-1]
    if "," in t:
        return [parse_value(v) for v in t.split(",") if v.strip() != ""]
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    num, slash, den = t.partition("/")
    if slash:  # a fraction such as 25/255 (a path like models/a.pt stays text)
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    return t


def conform(cls: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line (and TOML) spellings that :func:`parse_value` cannot type without knowing the parameter,
    typed for ``cls`` (a class with ``parameter_constraints``): ``3.0`` -> 3 where only an int is
    allowed, ``1``/``0`` -> True/False where only a bool is. Everything else is passed unchanged
    (and checked by ``validate_params``)."""
    table = cls.all_parameter_constraints() if hasattr(cls, "all_parameter_constraints") else {}

    def ok(v: Any, constraints: list[Any]) -> bool:
        return any(v is None if c is None else c.allows(v) for c in constraints)

    out = dict(params)
    for name, v in params.items():
        constraints = table.get(name)
        if not constraints or ok(v, constraints) or isinstance(v, bool):
            continue
        if isinstance(v, float) and v.is_integer() and ok(int(v), constraints):
            out[name] = int(v)
        elif isinstance(v, int) and v in (0, 1) and ok(bool(v), constraints):
            out[name] = bool(v)
    return out


def parse_sets(items: Sequence[str] | None, *, option: str = "--set") -> dict[str, dict[str, Any]]:
    """``["neural_cleanse.epochs=50", "lred.variant=U"]`` -> ``{"neural_cleanse": {"epochs": 50},
    "lred": {"variant": "U"}}`` (dashes in keys become underscores)."""
    params: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        meth, dot, name = key.strip().partition(".")
        if not sep or not dot or not name.strip() or not meth:
            raise InputError(f"{option} must look like METHOD.KEY=VALUE, e.g. neural_cleanse.epochs=50; "
                             f"got {item!r}")
        params.setdefault(meth, {})[name.strip().replace("-", "_")] = parse_value(value)
    return params


def load_config(path: Path | None) -> dict[str, dict[str, Any]]:
    """Method settings from a TOML file (one table per method); a clear error for anything else."""
    if path is None:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"settings file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"settings file {path} is a folder") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid TOML: {e}") from None
    out: dict[str, dict[str, Any]] = {}
    for meth, table in doc.items():
        if not isinstance(table, dict):
            raise InputError(f"{path}: {meth!r} must be a [{meth}] table of that method's parameters "
                             f"(e.g. [neural_cleanse] epochs = 50), got a {type(table).__name__}")
        out[meth] = {str(k).replace("-", "_"): v for k, v in table.items()}
    return out


def settings(sets: Sequence[str] | None, config: Path | None, *, known: Sequence[str] | None = None,
             option: str = "--set", kind: str | None = None) -> dict[str, dict[str, Any]]:
    """The file's settings overridden by ``--set``; method names are checked against ``known``.
    With ``kind`` (a registry kind), each registered method's values are typed for it by
    :func:`conform` (``epochs=50.0`` -> 50), from the command line and the file alike."""
    merged = load_config(config)
    for meth, params in parse_sets(sets, option=option).items():
        merged.setdefault(meth, {}).update(params)
    if known is not None:
        bad = [m for m in merged if m not in known]
        if bad:
            raise InputError(f"settings for unknown method {', '.join(map(repr, bad))}; "
                             f"methods: {', '.join(known)}")
    return {m: _conformed(kind, m, p) for m, p in merged.items()} if kind else merged


def _conformed(kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    from .._registry import available, get

    return conform(get(kind, name), params) if name in available(kind) else params


def check_params(kind: str, params: Mapping[str, Mapping[str, Any]]) -> None:
    """A clear error for a parameter that a method does not take (before any work)."""
    from .._registry import check_params as check

    for meth, p in params.items():
        check(kind, meth, p)


# ----------------------------------------------------------------------------------- progress

def _describe(p: Mapping[str, Any]) -> str:
    """One short line from a progress dict."""
    name = p.get("method") or p.get("detector")
    parts = []
    if "epoch" in p:
        parts.append(f"epoch {p['epoch']}/{p.get('epochs', '?')}")
        if "active" in p:
            parts.append(f"{p['active']} candidates active")
        if "loss" in p:
            parts.append(f"loss {float(p['loss']):.4f}")
    elif "step" in p:
        parts.append(f"step {p['step']}/{p.get('steps', '?')}")
    stage = p.get("stage")
    if stage == "sanity":
        return f"sanity check: accuracy on {p.get('n_images', '?')} scan images"
    if stage == "method":
        return f"{name} ({p.get('index', '?')}/{p.get('total', '?')}) ..."
    if stage == "method_done":
        pv = p.get("p_value")
        return (f"{name}: {'flags the model' if p.get('backdoored') else 'does not flag the model'}"
                + (f", p = {pv:.2g}" if isinstance(pv, float) else "") + f" ({p.get('seconds', 0):.1f}s)")
    if stage in ("fit", "score"):
        return f"{stage} {name} ..."
    if stage == "done":
        return "done" + (f": {p['verdict']}" if "verdict" in p else "")
    if stage and not parts:
        parts.append(str(stage))
    if "message" in p:
        parts.append(str(p["message"]))
    return (f"{name}: " if name else "") + (", ".join(parts) or "working ...")


class _Lines:
    """Plain timestamped lines (stdout is not a terminal: CI logs); repeated updates of the same
    stage are throttled to one line every ``every`` seconds."""

    def __init__(self, console: Any, title: str, every: float) -> None:
        self.console, self.every = console, every
        self._last: dict[str, float] = {}
        self.log(title)

    def log(self, text: str) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        self.console.print(f"{stamp} {text}", markup=False, highlight=False)

    def __call__(self, p: dict[str, Any]) -> None:
        if p.get("stage") is None:  # a method's inner progress: throttled per method
            key = str(p.get("method") or p.get("detector") or "")
            now = time.monotonic()
            if key in self._last and now - self._last[key] < self.every:
                return
            self._last[key] = now
        self.log(_describe(p))


def is_terminal(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_reporter(title: str, *, console: Any = None, every: float = 10.0,
                      terminal: bool | None = None) -> Iterator[Any]:
    """A ``ProgressFn`` for long commands: a rich status line on a terminal, plain timestamped
    lines (throttled to one per ``every`` seconds per method) when stdout is not a terminal.

    The returned callable also has ``.log(text)`` for one-off lines.
    """
    from ._common import console as default_console

    con = console or default_console
    tty = is_terminal() if terminal is None else terminal
    if not tty:
        yield _Lines(con, title, every)
        return
    with con.status(title) as status:
        class _Rich:
            def __call__(self, p: dict[str, Any]) -> None:
                if p.get("stage") == "method_done":
                    con.print(_describe(p), markup=False, highlight=False)
                status.update(_describe(p))

            def log(self, text: str) -> None:
                con.print(text, markup=False, highlight=False)

        yield _Rich()


def mitigation_settings(sets: Sequence[str] | None, config: Path | None, *, mitigation: str,
                        scan_method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``mitigate``'s settings: ``--set MITIGATION.KEY=VALUE`` for the repair and
    ``--set SCAN_METHOD.KEY=VALUE`` for the scan run first (the same syntax as every command);
    a bare ``KEY=VALUE`` (the old form) goes to the mitigation. Returns (mitigation, scan)."""
    bare = [s for s in sets or [] if "." not in s.partition("=")[0]]
    dotted = [s for s in sets or [] if s not in bare]
    merged = settings(dotted, config)
    for item in bare:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set must look like METHOD.KEY=VALUE, e.g. {mitigation}.epochs=5; got {item!r}")
        merged.setdefault(mitigation, {})[key.strip().replace("-", "_")] = parse_value(value)
    bad = [m for m in merged if m not in (mitigation, scan_method)]
    if bad:
        raise InputError(f"settings for {', '.join(map(repr, bad))}: mitigate takes settings of the "
                         f"mitigation ({mitigation}) and of the scan run first ({scan_method})")
    return (_conformed("mitigation", mitigation, merged.get(mitigation, {})),
            _conformed("model_detector", scan_method, merged.get(scan_method, {})))
