"""The worker process (``python -m trojanscope.serve._child``): loads the model, fits the guard,
then answers batches. It runs code we do not trust, so it sends back JSON only, lives under an
address-space limit, and sees a cleaned environment (see :mod:`.worker`)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from .worker import _read_frame, _write_frame


def _build(cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch

    from ..guard import Guard
    from ..models.with_data import model_and_data

    torch.set_num_threads(max(1, int(cfg.get("threads") or 1)))
    model, (train,) = model_and_data(cfg["model"], cfg["data"], cfg.get("data_dir"), ("train",),
                                     normalize=cfg.get("normalize"), module=cfg.get("module"),
                                     arch=cfg.get("arch"), device="cpu")
    clean = train.clean_subset(int(cfg["n_clean"]), seed=int(cfg["seed"]))
    guard = Guard(model, cfg["detectors"], fpr=float(cfg["fpr"]), split_fpr=bool(cfg["split_fpr"]),
                  seed=int(cfg["seed"])).fit(clean)
    info = {"model": os.path.basename(cfg["model"]), "in_shape": list(train.in_shape),
            "num_classes": int(next(iter(guard.detectors_.values())).num_classes_),
            "guard": {n: float(d.threshold_) for n, d in guard.detectors_.items()},
            "n_clean": len(clean)}
    return guard, info


def _predict(guard: Any, x: Any) -> list[dict[str, Any]]:
    import torch

    res = guard.predict(x)
    net = next(iter(guard.detectors_.values())).model_
    with torch.no_grad():
        logits = torch.cat([net(x[i:i + 512]) for i in range(0, len(x), 512)])
    if not torch.isfinite(logits).all():
        raise ValueError("the model produced NaN or infinite outputs")
    probs = torch.softmax(logits.double(), 1)
    names = list(res.scores)
    return [{"label": int(res.labels[i]), "probabilities": [float(p) for p in probs[i]],
             "flagged": bool(res.flagged[i]),
             "scores": {n: float(res.scores[n][i]) for n in names}} for i in range(len(x))]


def _error(e: BaseException) -> dict[str, str]:
    from ..errors import TrojanscopeError

    if isinstance(e, TrojanscopeError):
        return {"error": str(e)}
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return {"error": f"the model failed: {type(e).__name__}: {first}" if first
            else f"the model failed: {type(e).__name__}"}


def _child() -> None:
    # frames go to the parent on the original stdout; stray prints of the model go to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer.fileno()
    cfg = json.loads(_read_frame(inp))
    if cfg.get("max_memory"):
        import resource

        lim = int(cfg["max_memory"])
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    try:
        guard, info = _build(cfg)
    except BaseException as e:  # noqa: BLE001 - every failure goes back as one message
        _write_frame(out, json.dumps(_error(e)).encode())
        return
    _write_frame(out, json.dumps({"ready": True, **info}).encode())
    import torch

    c, h, w = info["in_shape"]
    while True:
        try:
            head = json.loads(_read_frame(inp))
        except EOFError:
            return
        if head.get("op") != "predict":
            return
        buf = _read_frame(inp)
        try:
            shape = [int(v) for v in head["shape"]]
            if len(shape) != 4 or shape[1:] != [c, h, w] or len(buf) != 4 * int(np.prod(shape)):
                raise ValueError(f"bad batch shape {shape}")
            x = torch.frombuffer(bytearray(buf), dtype=torch.float32).reshape(shape)
            reply: dict[str, Any] = {"results": _predict(guard, x)}
        except MemoryError:
            reply = {"error": "the model exceeded the worker's memory limit"}
        except BaseException as e:  # noqa: BLE001
            reply = _error(e)
        _write_frame(out, json.dumps(reply).encode())


if __name__ == "__main__":
    _child()
