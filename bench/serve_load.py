"""Load and fuzz the guarded inference service on loopback (issue 17).

A real ``trojanscope serve`` runs the demo's backdoored digits model behind a STRIP + KDE guard.
For 1, 8 and 64 concurrent clients, a bounded load generator (a request budget and a time budget
per level; it stops by itself) sends batches of 1-4 clean or triggered images and checks every
answer against the library's Guard on the same inputs: labels equal, scores within 1e-4. Then a
fuzz run sends malformed bodies (byte flips, truncations, insertions of valid npz/JSON/PNG
bodies, random bytes, wrong content types) and counts 5xx answers (the goal is none).

    python bench/serve_load.py [--requests 600] [--seconds 60] [--fuzz 1200] [--seed 0]

Writes bench/results/serve_load.json. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "cache" / "serve"
OUT = ROOT / "bench" / "results" / "serve_load.json"
GUARD = ("strip", "kde")
N_CLEAN = 100


def npz_body(x: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.savez(b, x=x)
    return b.getvalue()


def start_server(model: Path, max_queue: int) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "trojanscope", "serve", str(model), "--data", "digits",
                             "--guard", ",".join(GUARD), "--n-clean", str(N_CLEAN), "--port", "0",
                             "--max-queue", str(max_queue), "--max-batch", "64"],
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    m = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stderr.readline())
    if not m:
        proc.kill()
        raise SystemExit("the server did not start")
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()  # type: ignore[union-attr]
    port = int(m.group(1))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v1/health")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready")


def reference(model: Path, x: torch.Tensor) -> dict[str, np.ndarray]:
    from trojanscope.guard import Guard
    from trojanscope.models.with_data import model_and_data

    net, (train,) = model_and_data(model, "digits", None, ("train",))
    guard = Guard(net, {n: {"seed": 0} for n in GUARD}, fpr=0.05, seed=0)
    guard.fit(train.clean_subset(N_CLEAN, seed=0))
    res = guard.predict(x)
    return {"labels": res.labels.numpy(), **{n: res.scores[n].numpy() for n in GUARD}}


def load_level(port: int, clients: int, pool: np.ndarray, ref: dict[str, np.ndarray],
               max_requests: int, max_seconds: float, seed: int) -> dict[str, object]:
    """``clients`` threads share a budget of ``max_requests`` requests and ``max_seconds``."""
    lock = threading.Lock()
    budget = [max_requests]
    lat: list[float] = []
    stats: Counter[str] = Counter()
    stop_at = time.monotonic() + max_seconds

    def client(k: int) -> None:
        rng = np.random.default_rng([seed, clients, k])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop_at:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            n = int(rng.integers(1, 5))
            idx = rng.choice(len(pool), n, replace=False)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", npz_body(pool[idx]), {"Content-Type": "application/x-npz"})
                r = conn.getresponse()
                body = r.read()
            except OSError:
                with lock:
                    stats["lost"] += 1
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            dt = time.perf_counter() - t0
            ok = r.status == 200
            if ok:
                res = json.loads(body)["results"]
                ok = len(res) == n and all(
                    r_["label"] == int(ref["labels"][i]) and all(
                        abs(r_["scores"][g] - float(ref[g][i])) <= 1e-4 * max(1.0, abs(float(ref[g][i])))
                        for g in GUARD) for r_, i in zip(res, idx, strict=True))
            with lock:
                lat.append(dt)
                stats["requests"] += 1
                stats["images"] += n if r.status == 200 else 0
                stats[f"status_{r.status}"] += 1
                if r.status == 200 and not ok:
                    stats["wrong"] += 1
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.quantile(lat, [0.5, 0.99]) if lat else [float("nan")] * 2
    return {"clients": clients, "seconds": round(wall, 3), "requests": stats["requests"],
            "images": stats["images"], "requests_per_s": round(stats["requests"] / wall, 2),
            "images_per_s": round(stats["images"] / wall, 2), "p50_ms": round(1000 * q[0], 2),
            "p99_ms": round(1000 * q[1], 2), "lost": stats["lost"], "wrong": stats["wrong"],
            "status": {k: v for k, v in stats.items() if k.startswith("status_")}}


def fuzz(port: int, pool: np.ndarray, n: int, seed: int) -> dict[str, object]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    png = io.BytesIO()
    Image.fromarray((pool[0, 0] * 255).astype(np.uint8), mode="L").save(png, format="PNG")
    seeds = [(npz_body(pool[:3]), "application/x-npz"),
             (json.dumps({"x": pool[:2].round(3).tolist()}).encode(), "application/json"),
             (png.getvalue(), "image/png")]
    codes: Counter[int] = Counter()
    five = []
    for i in range(n):
        body, ctype = seeds[i % len(seeds)]
        b = bytearray(body)
        op = rng.integers(4)
        if op == 0:  # byte flips
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
        elif op == 1:  # truncation
            b = b[: int(rng.integers(len(b)))]
        elif op == 2:  # insertion
            at = int(rng.integers(len(b) + 1))
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        else:  # random bytes under a random declared type
            b = bytearray(rng.integers(0, 256, int(rng.integers(0, 512)), dtype=np.uint8).tobytes())
            ctype = seeds[int(rng.integers(3))][1] if rng.random() < 0.8 else "text/plain"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/v1/predict", bytes(b), {"Content-Type": ctype})
            r = conn.getresponse()
            r.read()
            codes[r.status] += 1
            if r.status >= 500:
                five.append({"case": i, "op": int(op), "status": r.status})
        except OSError as e:
            codes[-1] += 1
            five.append({"case": i, "op": int(op), "error": str(e)})
        finally:
            conn.close()
    return {"cases": n, "status": {str(k): v for k, v in sorted(codes.items())},
            "server_errors": len(five), "examples": five[:10]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600, help="request budget per concurrency level")
    ap.add_argument("--seconds", type=float, default=60, help="time budget per concurrency level")
    ap.add_argument("--fuzz", type=int, default=1200, help="malformed bodies to send")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from trojanscope.demo import demo_models
    from trojanscope.models import save_model

    CACHE.mkdir(parents=True, exist_ok=True)
    model = CACHE / "bd.safetensors"
    demo = demo_models(seed=0)
    if not model.exists():
        save_model(demo["backdoored"], model, in_shape=demo["train"].in_shape)
    test = demo["test"]
    clean = test.x[test.y != demo["target"]][:100]
    pool_t = torch.cat([clean, demo["trigger"].apply(clean)])
    pool_t = (pool_t * 255).round() / 255  # what uint8 clients can send; exact in float32
    pool = pool_t.numpy().astype(np.float32)
    ref = reference(model, pool_t)

    proc, port = start_server(model, max_queue=128)
    try:
        levels = [load_level(port, c, pool, ref, args.requests, args.seconds, args.seed) for c in (1, 8, 64)]
        fz = fuzz(port, pool, args.fuzz, args.seed)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/v1/health")
        healthy_after = c.getresponse().status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    out = {"command": "python bench/serve_load.py " + " ".join(sys.argv[1:]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2-core machine shared with other work during this run"},
           "model": "demo backdoored small_cnn, 16x16 digits", "guard": list(GUARD),
           "n_clean_per_class": N_CLEAN, "levels": levels, "fuzz": fz,
           "healthy_after_fuzz": healthy_after, "server_exit_status": code}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"levels": levels, "fuzz": {k: fz[k] for k in ("cases", "status", "server_errors")}},
                     indent=1))


if __name__ == "__main__":
    main()
