"""Matplotlib figures of scan results, as PNG bytes (Agg backend: no display needed).

Generic over methods: :func:`class_statistic_figure` draws the per-class statistic with the
decision threshold, :func:`trigger_figures` renders reversed triggers as image grids. A method
adds its own figures with :func:`register_figures` (or a ``figures(result)`` static method on
its detector class); :func:`method_figures` collects them for the HTML report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..types import ScanResult

Figure = tuple[str, bytes]  # (caption, PNG bytes)
FigureFn = Callable[[ScanResult], list[Figure]]

_FIGURES: dict[str, FigureFn] = {}

# per-class key plotted for a method and whether ScanResult.threshold applies to that key
# (L-RED thresholds its p-value, not the per-class r, so no line is drawn there).
_STAT_KEYS: dict[str, tuple[str, bool]] = {
    "neural_cleanse": ("anomaly_index", True),
    "bias_maps": ("score", True),
    "lred": ("r", False),
}
_MAX_GRID = 40  # most images in one trigger grid (pairs: the smallest masks first)


def register_figures(method: str) -> Callable[[FigureFn], FigureFn]:
    """Decorator: ``@register_figures("lred") def f(result) -> [(caption, png), ...]``."""

    def deco(fn: FigureFn) -> FigureFn:
        _FIGURES[method] = fn
        return fn

    return deco


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def bar_chart(values: Sequence[float | None], *, threshold: float | None = None, highlight: int | None = None,
              title: str = "", ylabel: str = "", labels: Sequence[str] | None = None) -> bytes:
    """Bar chart of one value per class, a dashed threshold line and the highlighted class in red."""
    plt = _plt()
    vals = [float("nan") if v is None else float(v) for v in values]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(vals) + 1.5), 2.8))
    colors = ["#d62728" if i == highlight else "#4c72b0" for i in range(len(vals))]
    ax.bar(range(len(vals)), [0 if not math.isfinite(v) else v for v in vals], color=colors)
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(vals)), labels or [str(i) for i in range(len(vals))],
                  fontsize=7 if len(vals) > 20 else 9)
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return to_png(fig)


def _display(img: torch.Tensor, signed: bool) -> torch.Tensor:
    """[C,H,W] -> [H,W] or [H,W,3] in [0, 1]; signed maps are rescaled per image."""
    img = img.detach().float().cpu()
    if signed:
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    img = img.clamp(0, 1)
    return img[0] if img.shape[0] == 1 else img[:3].permute(1, 2, 0)


def image_grid(rows: dict[str, torch.Tensor], col_labels: Sequence[str], *, title: str = "",
               signed: Sequence[str] = ()) -> bytes:
    """One row per entry of ``rows`` (each [K, C, H, W], C in {1, 3}), one column per image.

    The images are tiled into one canvas (one ``imshow``: fast even for many candidates).
    """
    plt = _plt()
    k = len(col_labels)
    first = next(iter(rows.values()))
    h, w = int(first.shape[-2]), int(first.shape[-1])
    pad = max(1, h // 8)
    rgb = any(v.shape[1] == 3 for v in rows.values())
    canvas = torch.ones(len(rows) * (h + pad) + pad, k * (w + pad) + pad, 3)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(k):
            img = _display(imgs[c], name in signed)
            img = img[..., None].expand(h, w, 3) if img.ndim == 2 else img
            y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y0:y0 + h, x0:x0 + w] = img
    scale = max(0.45, min(1.0, 24 / max(h, w)))
    fig, ax = plt.subplots(figsize=(0.75 * scale * k + 1.2, 0.9 * scale * len(rows) + 0.6))
    ax.imshow(canvas.numpy() if rgb else canvas[..., 0].numpy(), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([pad + c * (w + pad) + w / 2 for c in range(k)], list(col_labels), fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(rows))], list(rows), fontsize=8)
    ax.tick_params(length=0)
    for sp in ax.spines.values():
        sp.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return to_png(fig)


def class_statistic_figure(result: ScanResult) -> Figure | None:
    """The per-class statistic as a bar chart with the decision threshold, or None."""
    key, with_thr = _STAT_KEYS.get(result.method, ("", False))
    if key not in result.per_class:
        key = next((k for k in ("anomaly_index", "z", "statistic") if k in result.per_class), "")
        with_thr = bool(key) and result.p_value is None
    if not key:
        key = next((k for k, v in result.per_class.items() if _is_vector(v)), "")
    if not key or not _is_vector(result.per_class[key]):
        return None
    vals = result.per_class[key]
    highlight = result.target if result.target is not None else result.extra.get("candidate_target")
    thr = result.threshold if with_thr else None
    png = bar_chart(vals, threshold=thr, highlight=highlight, ylabel=key,
                    title=f"{result.method}: {key} per class")
    cap = f"{result.method}: per-class {key}" + (f"; dashed line = decision threshold {thr:g}" if thr is not None
                                                   else "") + "; red = detected (or most suspicious) class"
    return cap, png


def _is_vector(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 1 and all(x is None or isinstance(x, (int, float)) for x in v)


def _names(result: ScanResult, k: int) -> list[str]:
    pairs = result.extra.get("pairs")
    if isinstance(pairs, list) and len(pairs) == k:
        return [f"{s}→{t}" for s, t in pairs]
    return [str(i) for i in range(k)]


def _order(mask: torch.Tensor | None, k: int) -> list[int]:
    """All candidates, or the _MAX_GRID smallest masks (the interesting ones) when there are many."""
    if mask is not None and k > _MAX_GRID:
        return torch.argsort(mask.flatten(1).sum(1)).tolist()[:_MAX_GRID]
    return list(range(min(k, _MAX_GRID)))


def trigger_figures(result: ScanResult) -> list[Figure]:
    """Reversed triggers as image grids: mask / pattern / mask*pattern (Neural Cleanse eq. 2) for
    ``mask``+``pattern`` (and ``pair_mask``+``pair_pattern``), any other [K, C, H, W] tensor
    (additive patterns, maps) rescaled per image."""
    trig = {k: v for k, v in result.trigger.items()
            if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[1] in (1, 3) and v.shape[0] >= 1}
    figs: list[Figure] = []
    for mk, pk, what in (("mask", "pattern", "every class"), ("pair_mask", "pair_pattern", "every pair")):
        if mk in trig and pk in trig and trig[mk].shape[0] == trig[pk].shape[0]:
            m, p = trig.pop(mk), trig.pop(pk)
            names, order = _names(result, m.shape[0]), _order(m, m.shape[0])
            m, p = m[order], p[order]
            labels = [f"{names[i]}\n|m|={float(v):.0f}" for i, v in zip(order, m.flatten(1).sum(1), strict=True)]
            more = f" ({len(order)} smallest masks of {len(names)})" if len(order) < len(names) else ""
            figs.append((f"{result.method}: reversed trigger of {what}{more}: mask m, pattern Δ, m·Δ "
                         "(L1 norm of the mask under each label)",
                         image_grid({"mask": m, "pattern": p, "mask×pattern": m * p}, labels)))
    for key, v in trig.items():
        names, order = _names(result, v.shape[0]), _order(None, v.shape[0])
        figs.append((f"{result.method}: {key} per candidate (rescaled per image)",
                     image_grid({key: v[order]}, [names[i] for i in order], signed=(key,))))
    return figs


def method_figures(result: ScanResult) -> list[Figure]:
    """Method-specific figures: a function registered with :func:`register_figures`, else a
    ``figures(result)`` static method on the detector class; [] when neither exists."""
    fn = _FIGURES.get(result.method)
    if fn is None:
        try:
            from .._registry import get

            fn = getattr(get("model_detector", result.method), "figures", None)
        except Exception:  # unknown method name: no method figures
            fn = None
    return list(fn(result)) if callable(fn) else []


def all_figures(result: ScanResult) -> list[Figure]:
    """Every figure of one result: statistic bar chart, trigger grids, method figures."""
    figs = [f for f in (class_statistic_figure(result),) if f is not None]
    return figs + trigger_figures(result) + method_figures(result)
