"""Scan many model files: a directory or a manifest, on local processes or on Ray.

Each model is scanned by the front-door command (``trojanscope scan``) in its own process, so a
hostile file gets the same isolation, time limit and memory limit as a single scan, and a crash
costs one row, not the fleet. The scan's verdict comes back as its exit status (0 clean,
1 backdoored, 3 inconclusive, 2 error) and its JSON/HTML reports as text: results travel back to
the driver as plain data, so no shared filesystem is needed. With Ray, model files are shipped
to the workers as bytes (with their sidecar); the data set must be readable on every node.

``OUTDIR/results.jsonl`` gets one JSON object per model as soon as it is scanned (one write per
line, flushed and fsynced), so a killed run loses at most the models in flight; a second run
skips the models already there and drops a half-written last line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

MODEL_SUFFIXES = (".safetensors", ".pt2", ".pt", ".pth", ".onnx")
VERDICTS = {0: "clean", 1: "backdoored", 3: "inconclusive"}
MAX_MODEL_BYTES = 2 << 30  # shipped to a Ray worker in memory


@dataclass
class FleetModel:
    """One model of the fleet: its path as given, and ground truth when the manifest has it."""

    model: str
    path: Path
    truth: bool | None = None
    true_target: int | None = None


@dataclass
class FleetJob:
    """How every model is scanned: the ``trojanscope scan`` options and the limits."""

    data: str = "digits"
    data_dir: str | None = None
    method: str | None = None
    sets: list[str] = field(default_factory=list)
    seed: int = 0
    timeout: float = 3600.0
    extra: list[str] = field(default_factory=list)  # any other `scan` options, passed as given

    def command(self, model: Path, json_out: Path, html_out: Path) -> list[str]:
        cmd = [sys.executable, "-m", "trojanscope", "scan", str(model), "--data", self.data,
               "--json", str(json_out), "--html", str(html_out), "--seed", str(self.seed),
               "--timeout", f"{self.timeout:g}"]  # the scan's isolated worker is stopped in time
        if self.data_dir:
            cmd += ["--data-dir", self.data_dir]
        if self.method:
            cmd += ["--method", self.method]
        for s in self.sets:
            cmd += ["--set", s]
        return cmd + list(self.extra)


def _truth(text: str | None) -> bool | None:
    if text is None or text.strip() == "":
        return None
    t = text.strip().lower()
    if t in ("1", "true", "yes", "backdoored", "poisoned", "trojan", "trojaned"):
        return True
    if t in ("0", "false", "no", "clean", "benign"):
        return False
    raise InputError(f"manifest: cannot read ground truth {text!r} (use true/false, 1/0, "
                     f"backdoored/clean)")


def discover(source: str | Path) -> list[FleetModel]:
    """The models of a directory (every model file under it, sorted) or of a manifest CSV
    (column ``model``, paths relative to the CSV; optional ``backdoored`` and ``target``)."""
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES)
        if not files:
            raise InputError(f"{src}: no model files ({', '.join(MODEL_SUFFIXES)}) found")
        return [FleetModel(str(p.relative_to(src)), p) for p in files]
    if not src.is_file():
        raise InputError(f"no such directory or manifest: {src}")
    try:
        with src.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{src}: not a readable CSV manifest ({e})") from None
    if not rows or "model" not in rows[0]:
        raise InputError(f"{src}: a manifest is a CSV with a header and a `model` column")
    out, seen = [], set()
    for i, row in enumerate(rows, 2):
        name = (row.get("model") or "").strip()
        if not name:
            raise InputError(f"{src}, line {i}: empty `model`")
        if name in seen:
            raise InputError(f"{src}, line {i}: {name} is listed twice")
        seen.add(name)
        t = (row.get("target") or "").strip()
        try:
            target = int(t) if t else None
        except ValueError:
            raise InputError(f"{src}, line {i}: target must be an integer, got {t!r}") from None
        out.append(FleetModel(name, (src.parent / name), _truth(row.get("backdoored")), target))
    return out


def _sidecars(path: Path) -> list[Path]:
    cands = [path.with_suffix(".json"), path.with_name(path.name + ".json")]
    return [p for p in cands if p.is_file()]


def _report_summary(doc: Any) -> dict[str, Any]:
    """Target and p-value from a scan report (tolerant of the report's versions)."""
    if not isinstance(doc, dict):
        return {}
    v = doc.get("verdict")
    if isinstance(v, dict):
        return {"target": v.get("target"), "p_value": v.get("p_value"), "sources": v.get("sources")}
    c = doc.get("combined")
    if isinstance(c, dict):
        return {"target": c.get("target"), "p_value": c.get("p_value"), "sources": c.get("sources")}
    return {}


def scan_one(model_name: str, job: dict[str, Any], payload: dict[str, bytes] | None = None,
             path: str | None = None) -> dict[str, Any]:
    """Scan one model in a child ``trojanscope scan``; returns the result row plus the reports'
    text. ``payload`` (file name -> bytes: the model and its sidecar) is used where the model is
    not on this machine's disk (Ray workers); otherwise ``path``."""
    fj = FleetJob(**job)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="trojanscope-fleet-"))
    try:
        if payload is not None:
            names = list(payload)
            for n, data in payload.items():
                (tmp / Path(n).name).write_bytes(data)
            model_path = tmp / Path(names[0]).name
        else:
            assert path is not None
            model_path = Path(path)
        js, html = tmp / "report.json", tmp / "report.html"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            p = subprocess.run(fj.command(model_path, js, html), capture_output=True, text=True,
                               timeout=fj.timeout + 30, env=env, stdin=subprocess.DEVNULL)
            code, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            code, err = 2, f"error: the scan did not finish within {fj.timeout:g} s"
        verdict = VERDICTS.get(code, "error")
        row: dict[str, Any] = {"model": model_name, "verdict": verdict,
                               "backdoored": {"clean": False, "backdoored": True}.get(verdict),
                               "target": None, "p_value": None, "exit_status": code}
        report = js.read_text(encoding="utf-8") if js.is_file() else None
        if report is not None:
            try:
                row.update({k: v for k, v in _report_summary(json.loads(report)).items()
                            if v is not None})
            except ValueError:
                pass
        error = None
        if verdict == "error":
            lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
            error = lines[-1][len("error:"):].strip() if lines else (
                f"the scan ended with status {code}" + (f": {err.strip().splitlines()[-1][:300]}"
                                                        if err.strip() else ""))
        row["error"] = error
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return {"row": row, "json": report,
                "html": html.read_text(encoding="utf-8") if html.is_file() else None}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Rows already in ``results.jsonl`` by model; a torn last line (a killed run) is cut off."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):
        with path.open("r+b") as f:
            f.truncate(len(keep))
    rows: dict[str, dict[str, Any]] = {}
    for ln in keep.decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("model"), str):
            rows[row["model"]] = row
    return rows


def _append_line(path: Path, row: dict[str, Any]) -> None:
    data = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write: a line is whole or (killed mid-write) cut off on resume
        os.fsync(fd)
    finally:
        os.close(fd)


def _report_name(model: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)[-80:]
    return f"{stem}-{hashlib.sha1(model.encode()).hexdigest()[:8]}"


def _local(models: Sequence[FleetModel], job: dict[str, Any], workers: int
           ) -> Iterator[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:  # each thread waits on a child
        it = iter(models)
        running: dict[Future[dict[str, Any]], FleetModel] = {}
        try:
            while True:
                while len(running) < max(1, workers):
                    m = next(it, None)
                    if m is None:
                        break
                    running[ex.submit(scan_one, m.model, job, None, str(m.path))] = m
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    running.pop(f)
                    yield f.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def _payload(m: FleetModel) -> dict[str, bytes]:
    files = [m.path, *_sidecars(m.path)]
    size = sum(p.stat().st_size for p in files)
    if size > MAX_MODEL_BYTES:
        raise InputError(f"{m.model}: {size} bytes is too large to ship to a Ray worker")
    return {p.name: p.read_bytes() for p in files}


def _ray(models: Sequence[FleetModel], job: dict[str, Any], workers: int, address: str | None
         ) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'trojanscope[ray]'") from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "ignore_reinit_error": True}
        if address:
            kw["address"] = address
        else:
            kw["num_cpus"] = max(1, workers)
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(f"cannot start or join Ray{f' at {address}' if address else ''}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        started = True
    task = ray.remote(num_cpus=1, max_retries=0)(scan_one)
    pending: dict[Any, FleetModel] = {}
    it = iter(models)
    limit = max(1, workers) * 2  # bounded in flight: the driver holds few models' bytes at once
    try:
        while True:
            while len(pending) < limit:
                m = next(it, None)
                if m is None:
                    break
                pending[task.remote(m.model, job, _payload(m))] = m
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                m = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost worker is that model's error row
                    yield {"row": {"model": m.model, "verdict": "error", "backdoored": None,
                                   "target": None, "p_value": None, "exit_status": None,
                                   "error": f"Ray task failed: {type(e).__name__}", "seconds": None},
                           "json": None, "html": None}
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


@dataclass
class FleetSummary:
    """Counts of one ``scan_many`` run."""

    total: int
    skipped: int
    scanned: int
    verdicts: dict[str, int]
    results: Path
    summary_html: Path


def scan_many(source: str | Path, out_dir: str | Path, job: FleetJob, *, executor: str = "local",
              workers: int = 1, address: str | None = None,
              progress: Callable[[dict[str, Any]], None] | None = None) -> FleetSummary:
    """Scan every model of ``source`` (directory or manifest) into ``out_dir``; resumable."""
    if executor not in ("local", "ray"):
        raise InputError(f"--executor must be local or ray, got {executor!r}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    models = discover(source)
    out = Path(out_dir)
    src = Path(source).resolve()
    if out.resolve() == src:
        raise InputError("--out must not be the model directory or manifest itself")
    (out / "reports").mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = read_results(results)
    todo = [m for m in models if m.model not in done]
    truth = {m.model: m for m in models}
    job_d = job.__dict__.copy()
    runner = _ray(todo, job_d, workers, address) if executor == "ray" else _local(todo, job_d, workers)
    from .utils import atomic_write_bytes

    for i, res in enumerate(runner, 1):
        row = res["row"]
        m = truth[row["model"]]
        if m.truth is not None:
            row["truth"] = m.truth
        if m.true_target is not None:
            row["true_target"] = m.true_target
        name = _report_name(row["model"])
        for kind in ("json", "html"):
            if res.get(kind):
                atomic_write_bytes(out / "reports" / f"{name}.{kind}", res[kind].encode())
        row["report"] = f"reports/{name}.html" if res.get("html") else None
        _append_line(results, row)
        done[row["model"]] = row
        if progress:
            progress({"done": i, "total": len(todo), "row": row})
    rows = [done[m.model] for m in models if m.model in done]
    from .report.fleet import write_summary

    write_summary(out / "summary.html", rows, title=str(source))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return FleetSummary(len(models), len(models) - len(todo), len(todo), counts, results,
                        out / "summary.html")
