"""Build (or resume) a zoo with a local process pool, in-process, or on a Ray cluster."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._runtime import ProgressFn
from ..errors import InputError
from ..utils import atomic_write_json
from ._spec import ModelJob, ZooSpec, plan_jobs
from ._store import SPEC_FILE, Zoo, clean_stale, completed_rows, read_spec, write_manifest
from ._worker import build_model, zoo_data

EXECUTORS = ("local", "ray")


def _run_inline(jobs: list[ModelJob], spec_d: dict, zoo_dir: str, workers: int
                ) -> Iterator[dict[str, Any]]:
    for j in jobs:
        yield build_model(j.to_dict(), spec_d, zoo_dir)


def _run_pool(jobs: list[ModelJob], spec_d: dict, zoo_dir: str, workers: int
              ) -> Iterator[dict[str, Any]]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ._worker import init_worker

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    # workers die with this process (parent-death signal + watchdog, see init_worker)
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                             initargs=(os.getpid(),))
    finished = False
    try:
        # keep at most 2 jobs per worker queued, so an interrupt loses little work
        todo = list(reversed(jobs))
        running: set = set()
        while todo or running:
            while todo and len(running) < 2 * workers:
                running.add(ex.submit(build_model, todo.pop().to_dict(), spec_d, zoo_dir))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
        finished = True
    finally:
        if finished:
            # a normal end: let the pool close its pipes itself (terminating workers under a live
            # executor printed "Exception ignored ... Bad file descriptor" at exit)
            ex.shutdown(wait=True)
        else:
            # on an interrupt the jobs in flight die with the build (resume redoes them); left to
            # finish they would outlive a killed parent as orphaned forkserver workers
            procs = list((getattr(ex, "_processes", None) or {}).values())
            ex.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(timeout=5)


def _run_ray(jobs: list[ModelJob], spec_d: dict, zoo_dir: str, workers: int
             ) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'trojanscope[ray]'") from None
    if not ray.is_initialized():
        # joins a cluster when RAY_ADDRESS is set, else starts a local instance
        ray.init(num_cpus=workers or None, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=False)
    task = ray.remote(num_cpus=1)(build_model)
    pending = [task.remote(j.to_dict(), spec_d, zoo_dir) for j in jobs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def build_zoo(zoo_dir: str | Path, spec: ZooSpec, *, workers: int = 1, executor: str = "local",
              progress: ProgressFn | None = None) -> Zoo:
    """Train the clean and poisoned models of ``spec`` into ``zoo_dir``; resumes a killed build.

    Models already complete on disk are kept (the spec's plan must match the one they were built
    with; the counts may grow). Temporary files of a killed build are removed first.

    Args:
        zoo_dir: output folder (``spec.json``, ``manifest.json``, ``models/``).
        spec: what to build.
        workers: parallel worker processes, one torch thread each (0 = in this process).
        executor: "local" (process pool) or "ray" (``ray.init()``; set ``RAY_ADDRESS`` to join
            a cluster).
        progress: called after each model with {"done", "total", "built", "failed",
            "models_per_hour", "eta_s", "row"}.

    Returns:
        The :class:`Zoo` with every manifest row.
    """
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if workers < 0:
        raise InputError("workers must be >= 0")
    spec.validate()
    root = Path(zoo_dir)
    old = read_spec(root)
    if old is not None and old.plan_key() != spec.plan_key():
        diff = sorted(k for k, v in spec.plan_key().items() if old.plan_key().get(k) != v)
        raise InputError(f"{root} holds a zoo built with different settings ({', '.join(diff)}); "
                         "use another folder or the same settings to resume")
    train_d, _ = zoo_data(spec)  # fail early on missing data, and learn the class count
    jobs = plan_jobs(spec, train_d.num_classes)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / SPEC_FILE, spec.to_dict())
    clean_stale(root)
    rows = completed_rows(root)
    todo = [j for j in jobs if j.name not in rows]
    write_manifest(root, rows)
    runner = {"ray": _run_ray}.get(executor, _run_pool if workers > 0 else _run_inline)
    spec_d = json.loads(json.dumps(spec.to_dict()))
    t0, built = time.perf_counter(), 0
    total = len(jobs)
    for row in runner(todo, spec_d, str(root), workers):
        rows[row["name"]] = row
        built += 1
        write_manifest(root, rows)
        if progress is not None:
            rate = built / max(time.perf_counter() - t0, 1e-9) * 3600
            left = len(todo) - built
            progress({"done": len(rows), "total": total, "built": built,
                      "failed": sum(r["status"] != "ok" for r in rows.values()),
                      "models_per_hour": rate, "eta_s": left / rate * 3600 if rate else None,
                      "row": row})
    return Zoo(root, spec, [rows[k] for k in sorted(rows)])
