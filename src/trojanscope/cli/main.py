"""The ``trojanscope`` command. Each command lives in its own module of this package and
exposes ``register(app)``; modules are discovered, so adding a command touches no other file."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from ..errors import TrojanscopeError

app = typer.Typer(
    name="trojanscope",
    help="Find, explain and remove backdoors (Trojans) in image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Find, explain and remove backdoors (Trojans) in image classifiers."""


def _discover() -> None:
    from .. import cli

    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        mod = importlib.import_module(f"{cli.__name__}.{info.name}")
        if hasattr(mod, "register"):
            mod.register(app)


_discover()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: user errors become one clear line and exit status 2, never a traceback."""
    import signal

    from rich.markup import escape

    from ._common import console

    # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so long jobs run their cleanup:
    # worker pools are stopped and no half-written file is left behind
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except TrojanscopeError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")  # a path like a[b] stays as is
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
