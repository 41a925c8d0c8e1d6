"""Train one zoo model (runs inside a worker process or a Ray task)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..attacks import PoisoningAttack
from ..data import ImageData, load_dataset
from ..metrics import accuracy, attack_success_rate
from ..models import create_model
from ..train import train
from ..utils import generator
from ._spec import ModelJob, ZooSpec, trigger_for
from ._store import save_zoo_model

# Each worker process reads the dataset once and reuses it for every job it runs.
_DATA: dict[tuple[Any, ...], tuple[ImageData, ImageData]] = {}


def zoo_data(spec: ZooSpec) -> tuple[ImageData, ImageData]:
    """(train, test) data of a zoo, cached per process."""
    key = (spec.dataset, spec.data_root, spec.size)
    if key not in _DATA:
        kw = {"size": spec.size} if spec.size else {}
        _DATA[key] = (load_dataset(spec.dataset, "train", root=spec.data_root, **kw),
                      load_dataset(spec.dataset, "test", root=spec.data_root, **kw))
    return _DATA[key]


def init_worker(parent_pid: int | None = None) -> None:
    """One torch thread per worker: N workers on N cores, no oversubscription.

    With ``parent_pid`` (a pool worker), the worker also dies with that process: SIGKILL of
    ``zoo build`` must not leave workers training, orphaned, at 100% CPU.
    """
    torch.set_num_threads(1)
    if parent_pid is not None:
        die_with(parent_pid)


def die_with(parent_pid: int, period: float = 1.0) -> None:
    """End this process when ``parent_pid`` ends.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` fires when the direct parent (the forkserver,
    which itself exits when the main process is gone) dies; everywhere: a daemon thread polls
    ``parent_pid`` every ``period`` seconds and exits the worker when it is gone.
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass

    def watch() -> None:
        while True:
            time.sleep(period)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # pragma: no cover - the pid was reused by another user
                os._exit(1)
            if os.getppid() == 1:  # re-parented to init: the pool's parent is gone
                os._exit(1)

    threading.Thread(target=watch, name="trojanscope-parent-watchdog", daemon=True).start()


def build_model(job_d: dict[str, Any], spec_d: dict[str, Any], zoo_dir: str) -> dict[str, Any]:
    """Train, evaluate and save the model of one job; returns its manifest row.

    Plain-dict arguments so that the call pickles cheaply to a process pool or a Ray task.
    """
    init_worker()
    t0 = time.perf_counter()
    spec = ZooSpec.from_dict(spec_d)
    job = ModelJob(**{**job_d, "sources": tuple(job_d["sources"])})
    train_d, test_d = zoo_data(spec)
    g = generator(job.seed)
    if spec.train_subset and spec.train_subset < len(train_d):
        train_d = train_d.subset(torch.randperm(len(train_d), generator=g)[: spec.train_subset])
    if spec.eval_subset and spec.eval_subset < len(test_d):
        test_d = test_d.subset(torch.randperm(len(test_d), generator=generator(spec.seed))
                               [: spec.eval_subset])
    data, n_poison, trig = train_d, 0, None
    if job.poisoned:
        trig = trigger_for(job.trigger_id, spec)
        n_src = int(torch.isin(train_d.y, torch.tensor(job.sources)).sum())
        n_poison = max(1, round(spec.poison_ratio * n_src))
        attack = PoisoningAttack(trigger=trig, target=job.target, sources=list(job.sources),
                                 count=n_poison, seed=job.seed)
        data, _ = attack.poison_data(train_d)
    torch.manual_seed(job.seed)
    model = create_model(job.arch, train_d.num_classes, train_d.in_shape)
    train(model, data, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=job.seed)
    cta = accuracy(model, test_d)
    asr = None
    if trig is not None:
        asr = attack_success_rate(model, test_d, trig, job.target, sources=list(job.sources))["asr"]
    status = "ok"
    if cta < spec.min_cta:
        status = "failed_accuracy"
    elif asr is not None and asr < spec.min_asr:
        status = "failed_attack"
    row = {**job.to_dict(), "num_classes": train_d.num_classes, "in_shape": list(train_d.in_shape),
           "dataset": spec.dataset, "poison_ratio": spec.poison_ratio if job.poisoned else 0.0,
           "n_poison": n_poison, "n_train": len(train_d), "cta": cta, "asr": asr,
           "status": status, "seconds": time.perf_counter() - t0}
    save_zoo_model(Path(zoo_dir), job.name, model, row)
    return row
