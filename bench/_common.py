"""Shared helpers of the benchmark scripts: data root, cached MNIST models, JSON results.

Models are cached under ``bench/cache/`` (gitignored) as safetensors + JSON, behind a file
lock so that two benchmark processes never train the same model twice. Results go to
``bench/results/<name>.json``, written atomically with the command line that made them.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trojanscope.data import ImageData, load_dataset
from trojanscope.models import create_model
from trojanscope.utils import atomic_path, atomic_write_json, to_jsonable, versions

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "cache"
RESULTS = BENCH / "results"
_SHARED = BENCH.parents[1] / "shared" / "data"


def data_root(arg: str | Path | None = None) -> Path:
    """``--data-dir`` if given, else $TROJANSCOPE_DATA, else ../shared/data next to the repo."""
    for cand in (arg, os.environ.get("TROJANSCOPE_DATA"), _SHARED):
        if cand and Path(cand).is_dir():
            return Path(cand)
    sys.exit("no data folder: pass --data-dir DIR or set TROJANSCOPE_DATA (DIR/mnist/*.gz)")


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every bench script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data-dir", default=None, help="folder holding mnist/ (default $TROJANSCOPE_DATA)")
    p.add_argument("--quick", action="store_true", help="a smaller smoke run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p


_MNIST: dict[tuple[str, str], ImageData] = {}


def load_mnist(split: str = "train", root: str | Path | None = None) -> ImageData:
    key = (split, str(data_root(root)))
    if key not in _MNIST:
        _MNIST[key] = load_dataset("mnist", split, root=data_root(root))
    return _MNIST[key]


def cached_model(name: str, build: Callable[[], tuple[torch.nn.Module, dict[str, Any]]]
                 ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load ``bench/cache/<name>`` or build it with ``build() -> (model, info)`` and cache it.

    ``model`` must come from :func:`trojanscope.models.create_model` and ``info`` must hold
    ``arch``, ``num_classes`` and ``in_shape`` (plus anything else: metrics, attack, seed).
    """
    from safetensors.torch import load_file, save_file

    CACHE.mkdir(parents=True, exist_ok=True)
    wpath, ipath = CACHE / f"{name}.safetensors", CACHE / f"{name}.json"
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same model: wait for it
        if wpath.is_file() and ipath.is_file():
            info = json.loads(ipath.read_text())
            model = create_model(info["arch"], info["num_classes"], tuple(info["in_shape"]))
            model.load_state_dict(load_file(wpath))
            model.eval()
            info["cached"] = True
            return model, info
        t0 = time.perf_counter()
        model, info = build()
        info = dict(info, build_seconds=time.perf_counter() - t0, name=name)
        for k in ("arch", "num_classes", "in_shape"):
            if k not in info:
                raise ValueError(f"cached_model({name!r}): info lacks {k!r}")
        with atomic_path(wpath) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        atomic_write_json(ipath, to_jsonable(info))
        model.eval()
        info["cached"] = False
        return model, info


def cached_only(name: str) -> torch.nn.Module | None:
    """A model another bench script built into ``bench/cache/<name>``, or None if it is not there."""
    if not (CACHE / f"{name}.safetensors").is_file() or not (CACHE / f"{name}.json").is_file():
        return None

    def missing() -> tuple[torch.nn.Module, dict[str, Any]]:  # pragma: no cover - checked above
        raise FileNotFoundError(name)

    return cached_model(name, missing)[0]


def mnist_clean_model(root: str | Path | None = None, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The shared clean MNIST ``borji_cnn`` (1 epoch SGD momentum 0.9, lr 0.05, batch 64: CTA ~98.5%)."""
    from trojanscope.metrics import accuracy
    from trojanscope.train import train

    def build():
        tr, te = load_mnist("train", root), load_mnist("test", root)
        torch.manual_seed(seed)
        m = create_model("borji_cnn", 10, (1, 28, 28))
        train(m, tr, epochs=1, lr=0.05, batch_size=64, seed=seed)
        return m, {"arch": "borji_cnn", "num_classes": 10, "in_shape": [1, 28, 28], "epochs": 1, "lr": 0.05,
                   "seed": seed, "cta": accuracy(m, te)}

    return cached_model(f"mnist_clean_borji_seed{seed}", build)


def run_cli(args: list[str], timeout: float, env: dict[str, str] | None = None, tail: int = 3000) -> dict[str, Any]:
    """Run ``python -m trojanscope ARGS`` as a user would: exit status, seconds, output tail."""
    import subprocess

    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "trojanscope", *args], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, **(env or {})})
        rc, out = p.returncode, (p.stdout + p.stderr)[-tail:]
    except subprocess.TimeoutExpired:
        rc, out = None, "timed out"
    return {"command": "trojanscope " + shlex.join(args), "exit": rc,
            "seconds": round(time.perf_counter() - t0, 1), "output_tail": out}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` atomically with the command, versions and time."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        **to_jsonable(payload),
    }
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, doc)
    return path
