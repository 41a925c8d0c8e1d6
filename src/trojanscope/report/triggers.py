"""``--save-triggers DIR``: every reversed trigger of a scan as safetensors + PNG.

Per method that reverses triggers (``ScanResult.trigger`` holds ``pattern``, with or without
``mask``)::

    DIR/<method>.safetensors        every trigger tensor of the result (float32), e.g. mask
                                    [K,1,H,W] and pattern [K,C,H,W]; metadata: method, target,
                                    kind ("mask_pattern" or "additive"), the stamping formula
    DIR/<method>_class<k>.png       the trigger reversed for class k at its native resolution:
                                    mask_pattern: RGBA, colour = pattern, opacity = mask;
                                    additive: the pattern rescaled min..max to 0..255

Source-specific Neural Cleanse adds ``pair_mask``/``pair_pattern`` to the safetensors file (the
PNGs show the best pair into each target, as ``mask``/``pattern`` do). Writes are atomic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..types import ScanResult
from ..utils import atomic_write_bytes
from .figures import image_png

_FORMULA = {"mask_pattern": "x' = (1 - mask) * x + mask * pattern (Neural Cleanse eq. 2)",
            "additive": "x' = clip(x + pattern, 0, 1) (L-RED)"}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "method"


def save_triggers(results: Sequence[ScanResult], out_dir: str | Path) -> list[Path]:
    """Write the reversed triggers of ``results`` into ``out_dir`` (created if missing).

    Returns:
        The files written (empty when no result reverses a trigger).
    """
    from safetensors.torch import save

    out = Path(out_dir)
    written: list[Path] = []
    for r in results:
        pat = r.trigger.get("pattern")
        if not isinstance(pat, torch.Tensor) or pat.ndim != 4:
            continue
        mask = r.trigger.get("mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.shape[0] == pat.shape[0] else None
        kind = "additive" if mask is None else "mask_pattern"
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in r.trigger.items()
                   if isinstance(v, torch.Tensor)}
        meta = {"method": r.method, "kind": kind, "formula": _FORMULA[kind],
                "target": json.dumps(r.target), "backdoored": json.dumps(bool(r.backdoored)),
                "statistic_key": r.statistic_key}
        name = _safe(r.method)
        path = out / f"{name}.safetensors"
        atomic_write_bytes(path, save(tensors, metadata=meta))
        written.append(path)
        for k in range(pat.shape[0]):
            if mask is None:
                png = image_png(pat[k], size=1, signed=True)
            else:
                png = image_png(pat[k], size=1, alpha=mask[k])
            p = out / f"{name}_class{k}.png"
            atomic_write_bytes(p, png)
            written.append(p)
    return written
