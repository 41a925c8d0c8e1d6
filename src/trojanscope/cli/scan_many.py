"""``trojanscope scan-many``: scan every model of a directory or manifest, locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import DataDirOpt, DataOpt, SeedOpt, console, out


def scan_many_cmd(
    source: Annotated[Path, typer.Argument(metavar="DIR|MANIFEST.csv", help="a folder of model files "
                                           "or a CSV with a `model` column (optional `backdoored`, "
                                           "`target` ground truth)")],
    out_dir: Annotated[Path, typer.Option("--out", help="output folder: results.jsonl, reports/, "
                                          "summary.html (a second run resumes)")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    executor: Annotated[str, typer.Option("--executor", help="local (processes on this machine) or "
                                          "ray (a local Ray runtime, or the cluster at --address)")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster to join, e.g. "
                                                "ray://head:10001 (default: start a local runtime)")] = None,
    workers: Annotated[int, typer.Option("--workers", help="models scanned at once")] = 1,
    method: Annotated[str | None, typer.Option("--method", help="scan methods (default: the scan "
                                               "command's default, auto)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="METHOD.KEY=VALUE for every scan "
                                                   "(repeatable)")] = None,
    scan_arg: Annotated[list[str] | None, typer.Option("--scan-arg", help="any other `trojanscope "
                                                       "scan` option, passed as given (repeatable), "
                                                       "e.g. --scan-arg=--n-per-class=20")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds one model's scan may take; "
                                           "then it is killed and its row is an error")] = 3600.0,
    seed: SeedOpt = 0,
) -> None:
    """Scan every model of DIR or MANIFEST.csv; exit 1 if any is backdoored, 3 if any could not be
    judged (inconclusive or error), else 0."""
    import os

    from ..fleet import FleetJob, scan_many

    def progress(p: dict) -> None:
        r = p["row"]
        what = r["verdict"] + (f", target {r['target']}" if r.get("target") is not None else "")
        what += f", p={r['p_value']:.3g}" if isinstance(r.get("p_value"), (int, float)) else ""
        what += f": {r['error']}" if r.get("error") else ""
        secs = f" in {r['seconds']:.1f}s" if r.get("seconds") is not None else ""
        console.print(f"[{p['done']}/{p['total']}] {r['model']}: {what}{secs}", markup=False,
                      highlight=False)

    job = FleetJob(data=data, data_dir=str(data_dir) if data_dir else os.environ.get("TROJANSCOPE_DATA"),
                   method=method, sets=list(set_ or []), seed=seed, timeout=timeout,
                   extra=list(scan_arg or []))
    res = scan_many(source, out_dir, job, executor=executor, workers=workers, address=address,
                    progress=progress)
    if res.skipped:
        console.print(f"resumed: {res.skipped} model(s) already in {res.results}", markup=False)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(res.verdicts.items()))
    out.print(f"{res.total} models: {counts}", markup=False, highlight=False)
    out.print(f"wrote {res.results} and {res.summary_html}", markup=False, highlight=False)
    v = res.verdicts
    if v.get("backdoored"):
        raise typer.Exit(1)
    if v.get("inconclusive") or v.get("error"):
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("scan-many")(scan_many_cmd)
