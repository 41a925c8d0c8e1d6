"""``trojanscope demo``: the main job end to end on the embedded digits data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import SeedOpt, out


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.json / report.html")] = Path(
        "trojanscope-demo"),
    seed: SeedOpt = 0,
    method: Annotated[str | None, typer.Option("--method", help="comma-separated subset of methods")] = None,
) -> None:
    """Train a clean and a backdoored CNN on digits, run every detector, write a report."""
    from ..demo import run_demo

    methods = [m.strip() for m in method.split(",")] if method else None
    from ._options import progress_reporter

    with progress_reporter("trojanscope demo") as prog:  # timestamped lines when not a terminal
        rep = run_demo(out_dir, seed=seed, log=prog.log, methods=methods)
    out.print(f"report: {out_dir / 'report.json'}" + (f"  html: {rep['html']}" if "html" in rep else ""))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
