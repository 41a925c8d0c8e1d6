"""Fuzz the loaders with mutated files of every format (issue 12): count clean refusals, loads,
tracebacks, hangs and crashes. The goal is 0 tracebacks, 0 hangs, 0 crashes.

Seed files (generated, never committed): a small CNN saved as ``.safetensors`` (+ its JSON
sidecar), ``.pt2``, TorchScript ``.pt``, state-dict ``.pth`` and ``.onnx``, plus data files
(``.npz``, ``.png``, gzipped IDX). Each case applies one seeded mutation to one seed file:

* ``flip``: 1-16 random bytes replaced;
* ``truncate``: the file cut at a random length;
* ``insert``: 1-64 random bytes inserted at a random offset;
* ``member``: inside a zip archive, one member's content flipped / truncated / extended, the zip
  rewritten with correct CRCs (so the damage reaches the parsers behind the zip layer);
* ``sidecar``: the JSON sidecar byte-mutated or one key set to a hostile value.

Each case is loaded by the library entry point the CLI uses (``load_model``, then a forward pass
on four [0, 1] images; the data readers for data files) in a persistent worker process under a
memory limit; the parent gives each case ``--case-timeout`` seconds. Outcomes: ``refused`` (a
trojanscope error), ``loaded``, ``traceback`` (any other exception), ``hang`` (timeout: the worker
is killed and restarted), ``crash`` (the worker died). Case ``i`` is derived from ``(seed, i)``
only, and finished cases are appended to ``--work/cases.jsonl``, so an interrupted run resumes.

    nice python bench/fuzz.py [--n 2000] [--seed 0] [--time-limit 1500] [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import resource
import select
import shlex
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"
MODEL_SEEDS = ("m.safetensors", "m.pt2", "m.pt", "m.pth", "m.onnx")
DATA_SEEDS = ("d.npz", "d.png", "t10k-images-idx3-ubyte.gz")
IN_SHAPE = (1, 8, 8)
HOSTILE_VALUES = ["ten", 10**12, -3, 0, 1.5, None, [], {}, [1, 8.5, 8], [1, 200000, 200000], [0, 8, 8],
                  [1e308], [float("nan")], True, "x" * 5000, [[1]], [1, 2, 3, 4, 5]]
SIDECAR_KEYS = ["num_classes", "in_shape", "mean", "std", "arch", "format", "format_version", "file",
                "file_format", "class_names", "attack", "normalization_inside"]


# --------------------------------------------------------------------------------------------
# seed files


def make_seeds(folder: Path) -> None:
    """The valid files every mutation starts from."""
    import numpy as np
    import torch

    from trojanscope.models import create_model, save_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = create_model("small_cnn", 10, IN_SHAPE).eval()
    for name in MODEL_SEEDS:
        if not (folder / name).exists():
            save_model(net, folder / name, mean=[0.5], std=[0.25])
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), y=np.arange(6) % 3)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "d.png")
    x = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    idx = bytes([0, 0, 8, 3]) + struct.pack(">3I", 3, 8, 8) + x.tobytes()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx, mtime=0))


# --------------------------------------------------------------------------------------------
# mutations


def _mutate_bytes(data: bytes, rnd: random.Random, kind: str) -> bytes:
    b = bytearray(data)
    if kind == "flip" and b:
        for _ in range(rnd.randint(1, 16)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
    elif kind == "truncate":
        b = b[: rnd.randrange(max(1, len(b)))]
    elif kind == "insert":
        pos = rnd.randrange(len(b) + 1)
        b[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 64)))
    return bytes(b)


def _mutate_member(data: bytes, rnd: random.Random) -> tuple[bytes, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        target = rnd.choice(infos)
        kind = rnd.choice(["flip", "truncate", "insert"])
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as w:
            for info in infos:
                content = z.read(info)
                if info is target:
                    content = _mutate_bytes(content, rnd, kind)
                w.writestr(info.filename, content)
    return out.getvalue(), f"member:{kind}:{target.filename.split('/', 1)[-1]}"


def _mutate_sidecar(side_text: str, rnd: random.Random) -> tuple[str, str]:
    if rnd.random() < 0.5:
        kind = rnd.choice(["flip", "truncate", "insert"])
        return _mutate_bytes(side_text.encode(), rnd, kind).decode("utf-8", "replace"), f"sidecar:{kind}"
    side = json.loads(side_text)
    key = rnd.choice(SIDECAR_KEYS)
    side[key] = rnd.choice(HOSTILE_VALUES)
    return json.dumps(side), f"sidecar:{key}"


def make_case(seeds: Path, out: Path, seed: int, i: int) -> dict[str, Any]:
    """Write case ``i`` into ``out`` (a fresh folder); returns its description."""
    rnd = random.Random(f"{seed}:{i}")
    name = rnd.choice(MODEL_SEEDS + DATA_SEEDS)
    data = (seeds / name).read_bytes()
    is_zip = data[:4] == b"PK\x03\x04"
    choices = ["flip", "truncate", "insert"] + (["member"] * 2 if is_zip else [])
    if name.endswith((".safetensors", ".pt2", ".onnx")):
        choices.append("sidecar")
    how = rnd.choice(choices)
    out.mkdir(parents=True, exist_ok=True)
    side_src = seeds / (Path(name).with_suffix(".json").name if name.endswith(".safetensors") else name + ".json")
    side_dst = out / side_src.name
    if side_src.exists():
        side_dst.write_text(side_src.read_text())
    if how == "member":
        data, how = _mutate_member(data, rnd)
    elif how == "sidecar":
        text, how = _mutate_sidecar(side_src.read_text(), rnd)
        side_dst.write_text(text)
    else:
        data = _mutate_bytes(data, rnd, how)
    (out / name).write_bytes(data)
    return {"i": i, "file": name, "mutation": how, "bytes": len(data)}


# --------------------------------------------------------------------------------------------
# the worker: loads one case per request, reports the outcome as one JSON line


def load_case(path: Path) -> str:
    """Load ``path`` as the CLI would; returns "loaded" or raises."""
    import torch

    from trojanscope.data import load_dataset, load_images

    if path.suffix in (".npz",):
        load_dataset("npz", root=path)
        load_images(path)
        return "loaded"
    if path.suffix == ".png":
        load_images(path)
        return "loaded"
    if path.name.endswith("idx3-ubyte.gz"):
        from trojanscope.data import read_idx

        read_idx(path)
        return "loaded"
    from trojanscope.metrics import predict
    from trojanscope.models import load_model

    kw: dict[str, Any] = {"in_shape": IN_SHAPE}
    if path.suffix == ".pth":
        kw.update(arch="small_cnn", num_classes=10)
    model = load_model(path, **kw)
    x = torch.rand(4, *IN_SHAPE, generator=torch.Generator().manual_seed(0))
    predict(model, x)
    return "loaded"


def worker(memory_gb: float) -> None:
    import logging
    import traceback
    import warnings

    import torch

    from trojanscope.errors import TrojanscopeError

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    limit = int(memory_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    for line in sys.stdin:
        path = Path(line.strip())
        try:
            res = {"outcome": load_case(path)}
        except TrojanscopeError as e:
            res = {"outcome": "refused", "error": type(e).__name__, "message": str(e)[:300]}
        except BaseException as e:  # noqa: BLE001 - that is what is being counted
            tb = traceback.format_exc().strip().splitlines()
            res = {"outcome": "traceback", "error": type(e).__name__, "message": str(e)[:300],
                   "where": tb[-3:] if len(tb) >= 3 else tb}
        out.write(json.dumps(res) + "\n")
        out.flush()


class Worker:
    def __init__(self, memory_gb: float) -> None:
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", "--memory-gb", str(memory_gb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env, bufsize=1)

    def run(self, path: Path, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"outcome": "crash", "message": f"worker gone (exit {self.proc.poll()})"}
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            return {"outcome": "hang", "message": f"no answer within {timeout} s"}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            return {"outcome": "crash", "message": f"worker died (exit {rc})"}
        return json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None


def fuzz(n: int, seed: int, work: Path, time_limit: float, case_timeout: float, memory_gb: float,
         progress: bool = False) -> dict[str, Any]:
    """Run cases ``0..n-1`` (resuming from ``work/cases.jsonl``); returns the summary."""
    seeds = work / "seeds"
    make_seeds(seeds)
    log = work / "cases.jsonl"
    done: dict[int, dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if rec.get("seed") == seed:
                done[rec["i"]] = rec
    resumed = len(done)
    t0 = time.perf_counter()
    w = Worker(memory_gb)
    with open(log, "a") as f:
        for i in range(n):
            if i in done:
                continue
            if time.perf_counter() - t0 > time_limit:
                break
            case_dir = work / "case"
            for p in case_dir.glob("*") if case_dir.exists() else ():
                p.unlink()
            desc = make_case(seeds, case_dir, seed, i)
            if not w.alive():
                w = Worker(memory_gb)
            t = time.perf_counter()
            res = w.run(case_dir / desc["file"], case_timeout)
            if res["outcome"] in ("hang", "crash"):
                w.kill() if w.alive() else None
                w = Worker(memory_gb)
            rec = {"seed": seed, **desc, **res, "seconds": round(time.perf_counter() - t, 3)}
            done[i] = rec
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if progress and len(done) % 100 == 0:
                print(f"{len(done)}/{n} cases, {Counter(r['outcome'] for r in done.values())}", file=sys.stderr)
    w.kill()
    recs = [done[i] for i in sorted(done)]
    bad = [r for r in recs if r["outcome"] in ("traceback", "hang", "crash")]
    by_file: dict[str, Counter] = {}
    by_mut: dict[str, Counter] = {}
    for r in recs:
        by_file.setdefault(r["file"], Counter())[r["outcome"]] += 1
        by_mut.setdefault(r["mutation"].split(":")[0], Counter())[r["outcome"]] += 1
    outcomes = Counter(r["outcome"] for r in recs)
    return {
        "cases": len(recs), "requested": n, "seed": seed, "resumed_cases": resumed,
        "complete": len(recs) == n,
        "outcomes": {k: outcomes.get(k, 0) for k in ("refused", "loaded", "traceback", "hang", "crash")},
        "by_file": {k: dict(v) for k, v in sorted(by_file.items())},
        "by_mutation": {k: dict(v) for k, v in sorted(by_mut.items())},
        "problems": bad[:50],
        "case_timeout_s": case_timeout, "memory_limit_gb": memory_gb,
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        "mean_case_seconds": round(sum(r["seconds"] for r in recs) / max(1, len(recs)), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="cases (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=1800.0, help="stop after this many seconds (resumable)")
    p.add_argument("--case-timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    p.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit of the worker")
    p.add_argument("--work", type=Path, default=BENCH / "cache" / "fuzz", help="seed files and the case log")
    p.add_argument("--quick", action="store_true", help="200 cases")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.memory_gb)
        return
    os.nice(10)
    sys.path.insert(0, str(SRC))
    n = 200 if args.quick else args.n
    args.work.mkdir(parents=True, exist_ok=True)
    summary = fuzz(n, args.seed, args.work, args.time_limit, args.case_timeout, args.memory_gb, progress=True)
    sys.path.insert(0, str(BENCH))
    from _common import write_result

    summary["command"] = "nice python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]])
    path = write_result("fuzz_quick" if args.quick else "fuzz", summary)
    print(json.dumps(summary["outcomes"]), f"({summary['cases']} cases) -> {path}")


if __name__ == "__main__":
    main()
