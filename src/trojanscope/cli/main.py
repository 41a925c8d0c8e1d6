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


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"trojanscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
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


def _exit_watchdog(grace: float = 4.0) -> None:
    """End the process ``grace`` s after SIGINT/SIGTERM (at once on a second one) if it has not
    unwound by then. Python runs signal handlers in the main thread between bytecodes, so a main
    thread stuck in native code never sees its KeyboardInterrupt; the C-level handler still writes
    the signal number to the wakeup fd, which this thread waits on."""
    import os
    import select
    import signal
    import threading

    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (an embedding): no watchdog
        os.close(r)
        os.close(w)
        return

    def watch() -> None:
        os.read(r, 1)
        select.select([r], [], [], grace)  # a second signal ends the wait early
        os.write(2, b"interrupted\n")
        os._exit(130)

    threading.Thread(target=watch, name="trojanscope-exit-watchdog", daemon=True).start()


def main() -> None:
    """Entry point: user errors become one clear line and exit status 2, never a traceback."""
    import signal

    from rich.markup import escape

    from ._common import console

    # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so long jobs run their cleanup:
    # worker pools are stopped and no half-written file is left behind
    signal.signal(signal.SIGTERM, _interrupt)
    _exit_watchdog()
    try:
        app()
    except TrojanscopeError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")  # a path like a[b] stays as is
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted(console)
    except SystemExit as e:
        if e.code != 130:  # typer turns KeyboardInterrupt into exit status 130
            raise
        _interrupted(console)


def _interrupted(console) -> None:
    """Say so and leave at once: the work has unwound (an isolated child is already killed), and
    tearing the interpreter down with torch loaded takes seconds on a busy machine."""
    import os

    console.print("[yellow]interrupted[/]")
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:  # noqa: BLE001, S110 - a closed pipe
            pass
    os._exit(130)


if __name__ == "__main__":
    main()
