"""Figures of the adversarial bias maps method, like those of Borji, "Adversarial examples are
useful too!": bias-map grids with "ratio pred" titles (Figs. 3-7), per-class distance bar charts
(Figs. 8, 22) and the source x target grid of Algorithm II (Figs. 9-12).

The figure functions return matplotlib figures (for the benchmark's PNG files);
:func:`result_figures` returns (caption, PNG bytes) pairs for the HTML report, which finds it
through the figure registry (:mod:`.registry`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..types import ScanResult
from ..utils import atomic_write_bytes
from .figures import Figure, _display, _plt, to_png


def _img(ax: Any, img: torch.Tensor) -> None:
    ax.imshow(_display(img, signed=False).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def bias_map_grid(maps: torch.Tensor, reference_maps: torch.Tensor | None = None,
                  ratio: Sequence[float] | torch.Tensor | None = None,
                  reference_ratio: Sequence[float] | torch.Tensor | None = None, *,
                  title: str = "", row_names: tuple[str, str] = ("attacked", "reference")) -> Any:
    """Bias maps per class (top row) over those of the reference (bottom row), as Fig. 4.

    Args:
        maps: [K, C, H, W] bias maps of the scanned model, in [0, 1].
        reference_maps: [K, C, H, W] of the reference model (or of the other classes), or None.
        ratio, reference_ratio: [K] fraction of the examples aimed at each class that reached it
            (the "ratio pred" titles of the paper).
        title: the figure's title.
        row_names: labels of the two rows.
    """
    plt = _plt()
    rows = [(row_names[0], maps, ratio)]
    if reference_maps is not None:
        rows.append((row_names[1], reference_maps, reference_ratio))
    k = maps.shape[0]
    fig, axes = plt.subplots(len(rows), k, figsize=(1.25 * k + 0.6, 1.45 * len(rows) + 0.5), squeeze=False)
    for r, (name, m, rat) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            _img(ax, m[c])
            if rat is not None:
                ax.set_title(f"ratio pred {c}: {float(rat[c]):.2g}", fontsize=6.5)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _bars(ax: Any, values: Sequence[float], marks: Mapping[int, str], title: str) -> None:
    vals = [0.0 if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    colors = [marks.get(i, "#4c72b0") for i in range(len(vals))]
    ax.bar(range(len(vals)), vals, color=colors)
    ax.set_xticks(range(len(vals)), [str(i) for i in range(len(vals))], fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=8)


def distance_bars(distance: Sequence[float], *, source: int | None = None, target: int | None = None,
                  title: str = "distance between bias maps") -> Any:
    """One bar per class: the Euclidean distance between the two models' maps (Fig. 8)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    marks = {i: col for i, col in ((source, "#ff7f0e"), (target, "#d62728")) if i is not None}
    _bars(ax, distance, marks, title)
    ax.set_xlabel("class")
    ax.set_ylabel("||map - reference map||", fontsize=8)
    fig.tight_layout()
    return fig


def distance_panels(distances: Mapping[str, Mapping[str, Sequence[float]]], *,
                    marks: Mapping[str, tuple[int, int]] | None = None, title: str = "") -> Any:
    """Fig. 8 / Fig. 22: one column per attack, one row per input type (blank, noise, data).

    Args:
        distances: attack -> input type -> [K] distances.
        marks: attack -> (source, target), drawn orange / red.
        title: the figure's title.
    """
    plt = _plt()
    attacks = list(distances)
    inputs = sorted({i for d in distances.values() for i in d}, key=lambda s: ("blank", "noise", "data").index(s)
                    if s in ("blank", "noise", "data") else 9)
    fig, axes = plt.subplots(len(inputs), len(attacks), figsize=(2.4 * len(attacks) + 0.6, 1.8 * len(inputs) + 0.8),
                             squeeze=False)
    for c, att in enumerate(attacks):
        src, tgt = (marks or {}).get(att, (None, None))
        for r, inp in enumerate(inputs):
            ax = axes[r][c]
            if inp not in distances[att]:
                ax.axis("off")
                continue
            _bars(ax, distances[att][inp], {src: "#ff7f0e", tgt: "#d62728"}, f"{att}, {inp}")
    fig.suptitle(title or "distance between bias maps of the attacked and the clean model per class "
                 "(orange = source, red = target)", fontsize=9)
    fig.tight_layout()
    return fig


def pair_grid(pair_maps: torch.Tensor, *, title: str = "") -> Any:
    """Algorithm II's maps: rows = source class, columns = predicted class (Fig. 9).

    Args:
        pair_maps: [K*K, C, H, W] or [K, K, C, H, W]; the diagonal is left blank.
    """
    plt = _plt()
    k = int(round(math.sqrt(pair_maps.shape[0]))) if pair_maps.ndim == 4 else pair_maps.shape[0]
    maps = pair_maps.reshape(k, k, *pair_maps.shape[-3:])
    fig, axes = plt.subplots(k, k, figsize=(0.8 * k + 0.8, 0.8 * k + 0.9), squeeze=False)
    for s in range(k):
        for t in range(k):
            ax = axes[s][t]
            if s == t:  # no pair: an empty frame that still carries the row/column label
                ax.set_frame_on(False)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                _img(ax, maps[s, t])
            if s == 0:
                ax.set_title(str(t), fontsize=8)
            if t == 0:
                ax.set_ylabel(str(s), fontsize=8)
    fig.suptitle(title or "Algorithm II bias maps (rows: source, columns: prediction)", fontsize=9)
    return fig


def save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def result_figures(result: ScanResult) -> list[Figure]:
    """The method's figures of one scan for the HTML report: the bias-map grid, the per-class
    distances and, for Algorithm II, the source x prediction grid."""
    figs: list[Figure] = []
    maps = result.trigger.get("bias_maps")
    ref = result.trigger.get("reference_maps")
    pc = result.per_class
    with_ref = result.extra.get("comparison") == "reference"
    if isinstance(maps, torch.Tensor) and maps.ndim == 4:
        fig = bias_map_grid(maps, ref, pc.get("ratio_pred"), pc.get("reference_ratio_pred"),
                            row_names=("scanned", "reference" if with_ref else "other classes"))
        figs.append(("bias_maps: mean adversarial example per predicted class (top) and the "
                     + ("reference model's" if with_ref else "mean of the other classes'")
                     + " (bottom); ratio pred = share of the examples aimed at a class that reached it",
                     to_png(fig)))
    if "distance" in pc:
        fig = distance_bars(pc["distance"], target=result.target,
                            title="distance between bias maps, " + ("scanned vs reference" if with_ref
                                                                  else "class vs other classes"))
        figs.append(("bias_maps: Euclidean distance between bias maps per class (Borji Fig. 8); "
                     "red = detected target", to_png(fig)))
    pair = result.trigger.get("pair_maps")
    if isinstance(pair, torch.Tensor):
        figs.append(("bias_maps, Algorithm II: maps per (source row, predicted column)",
                     to_png(pair_grid(pair))))
    return figs
