"""Matplotlib figures of scan results, as PNG bytes (Agg backend: no display needed).

Generic over methods: :func:`class_statistic_figure` draws the per-class statistic named by the
result's ``statistic_key`` (with the threshold line only when ``threshold_on`` says the threshold
applies to that statistic), :func:`trigger_figures` renders reversed triggers as image grids.
Method-specific figures come from the figure registry (:mod:`.registry`, which also
collects every figure of a result: :func:`~.registry.all_figures`). :func:`image_png`
renders one image enlarged (nearest neighbour) with Pillow, for the HTML report's trigger panel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..types import ScanResult

Figure = tuple[str, bytes]  # (caption, PNG bytes)

_MAX_GRID = 40  # most images in one trigger grid (pairs: the smallest masks first)
# colours: the same in every chart and in the HTML banner
RED, AMBER, BLUE, GREEN = "#c62828", "#e69500", "#6b8fb8", "#2e7d32"


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
              title: str = "", ylabel: str = "", labels: Sequence[str] | None = None,
              colors: Sequence[str] | None = None, legend: Sequence[tuple[str, str]] = (),
              threshold_label: str | None = None) -> bytes:
    """Bar chart of one value per class with an optional dashed threshold line.

    Args:
        values: one value per class (None / non-finite: no bar).
        threshold: where to draw the dashed line, or None.
        highlight: a class drawn red (when ``colors`` is not given).
        title, ylabel, labels: texts; labels default to the class indices.
        colors: one colour per bar (overrides ``highlight``).
        legend: extra (colour, label) legend entries for the bar colours.
        threshold_label: the threshold line's legend text (default "threshold T").
    """
    plt = _plt()
    from matplotlib.patches import Patch

    vals = [float("nan") if v is None else float(v) for v in values]
    fig, ax = plt.subplots(figsize=(max(4.0, min(6.6, 0.35 * len(vals) + 1.5)), 2.6))
    colors = list(colors) if colors is not None else [RED if i == highlight else BLUE for i in range(len(vals))]
    ax.bar(range(len(vals)), [0 if not math.isfinite(v) else v for v in vals], color=colors)
    handles: list[Any] = [Patch(color=c, label=lab) for c, lab in legend]
    if threshold is not None and math.isfinite(threshold):
        handles.append(ax.axhline(threshold, color="k", ls="--", lw=1,
                                  label=threshold_label or f"threshold {threshold:g}"))
    if handles:  # below the axes: the plot keeps its width in a narrow page
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.2), fontsize=8, frameon=False)
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


def per_class_key(result: ScanResult) -> str:
    """The per-class vector to chart: ``statistic_key`` when ``per_class`` holds it, else the
    first per-class number vector; "" when there is none."""
    if _is_vector(result.per_class.get(result.statistic_key)):
        return result.statistic_key
    return next((k for k, v in result.per_class.items() if _is_vector(v)), "")


def candidate(result: ScanResult) -> int | None:
    """The class a result points at: its target, else its most suspicious class (or None)."""
    if result.target is not None:
        return int(result.target)
    c = result.extra.get("candidate_target") if isinstance(result.extra, dict) else None
    return int(c) if isinstance(c, int) and not isinstance(c, bool) else None


def class_statistic_figure(result: ScanResult) -> Figure | None:
    """The per-class statistic as a bar chart, or None when the result has no per-class vector.

    Colours follow the method's verdict: red = the flagged target (only when the method flags
    the model), amber = the most suspicious class of a method that does not flag it, blue = the
    others. The dashed line is drawn only when ``result.threshold`` applies to the charted values
    (``threshold_on == "statistic"`` and the chart is of ``statistic_key``); its legend names the
    statistic. A p-value test says so in the legend instead (its threshold is not on this axis).
    """
    key = per_class_key(result)
    if not key:
        return None
    vals = result.per_class[key]
    cand = candidate(result)
    if cand is None or not 0 <= cand < len(vals):
        finite = [(float(v), i) for i, v in enumerate(vals) if v is not None and math.isfinite(float(v))]
        cand = max(finite)[1] if finite and result.threshold_on == "statistic" else None
    hot = RED if result.backdoored else AMBER
    colors = [hot if i == cand else BLUE for i in range(len(vals))]
    legend = []
    if cand is not None:
        legend.append((hot, f"class {cand}: " + ("flagged target" if result.backdoored
                                                  else "most suspicious, not flagged")))
    on_axis = result.threshold_on == "statistic" and key == result.statistic_key
    thr = result.threshold if on_axis else None
    thr_label = f"threshold on {key}: {thr:g}" if thr is not None else None
    note = ""
    if result.threshold_on == "p_value" and result.threshold is not None:
        p = result.p_value
        note = (f"decision on the p-value of the largest {key}: p = {_fmt(p)} "
                f"{'<' if result.backdoored else '≥'} {result.threshold:g}")
        legend.append(("none", note))
    png = bar_chart(vals, threshold=thr, title=f"{result.method}: {key} per class", ylabel=key,
                    colors=colors, legend=legend, threshold_label=thr_label)
    cap = (f"{result.method}: {key} per class"
           + (f"; dashed line = decision threshold {thr:g} on {key}" if thr is not None else "")
           + (f"; {note} (no threshold on this axis)" if note else "")
           + ("; red = flagged target" if result.backdoored and cand is not None else "")
           + ("; amber = most suspicious class, not flagged" if not result.backdoored and cand is not None else ""))
    return cap, png


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3g}"


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


def image_png(img: torch.Tensor, size: int = 160, *, signed: bool = False,
              alpha: torch.Tensor | None = None) -> bytes:
    """One [C, H, W] image as PNG bytes, enlarged with nearest-neighbour to ``size`` px on its
    longer side (pixels stay sharp).

    Args:
        img: [C, H, W], C in {1, 3}, values in [0, 1] (``signed``: rescaled to [0, 1] first).
        size: output size of the longer side, in pixels.
        signed: rescale min..max to 0..1 (additive patterns).
        alpha: optional [1, H, W] or [H, W] opacity in [0, 1] (a trigger mask): RGBA output.
    """
    from PIL import Image

    arr = _display(img, signed)
    arr = arr[..., None].expand(*arr.shape, 3) if arr.ndim == 2 else arr
    if alpha is not None:
        a = alpha.detach().float().cpu()
        a = (a.amax(0) if a.ndim == 3 else a).reshape(arr.shape[0], arr.shape[1]).clamp(0, 1)
        arr = torch.cat([arr, a[..., None]], dim=-1)
    data = (arr * 255).round().to(torch.uint8).numpy()
    im = Image.fromarray(data, mode="RGBA" if alpha is not None else "RGB")
    h, w = data.shape[:2]
    scale = max(1, size // max(h, w))
    if scale > 1:
        im = im.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
