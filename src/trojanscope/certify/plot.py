"""Bound-vs-eps figure: the certified upper bound U* and the candidate attack's test loss/error.

Mirrors Figure 2 of Steinhardt, Koh & Liang (2017): one panel of losses (solid = upper bound,
dashed = the loss the candidate attack achieves on the defender's model) and one of test error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..types import Certificate
from ..utils import atomic_path


def certificate_rows(certs: Sequence[Certificate]) -> list[dict]:
    """The JSON rows of ``trojanscope certify --json`` (schema 1)."""
    rows = []
    for c in certs:
        row = {"defense": c.defense, "eps": c.eps, "upper_bound": c.upper_bound,
               "attack_loss": c.attack_loss, "attack_error": c.attack_error, "lower_bound": c.lower_bound}
        if c.extra.get("class") is not None:
            row["class"] = c.extra["class"]
        row["extra"] = c.extra
        rows.append(row)
    return rows


def plot_certificates(certs: Sequence[Certificate], path: str | Path, title: str = "") -> Path:
    """Write the bound-vs-eps PNG (one line per defence; per class with one-vs-rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Certificate]] = {}
    for c in certs:
        key = c.defense + (f" [class {c.extra['class']}]" if c.extra.get("class") is not None else "")
        groups.setdefault(key, []).append(c)
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, cs) in enumerate(groups.items()):
        cs = sorted(cs, key=lambda c: c.eps)
        e = [c.eps for c in cs]
        col = colors[i % len(colors)]
        ax_l.plot(e, [c.upper_bound for c in cs], "-o", color=col, label=name)
        ax_l.plot(e, [c.attack_loss for c in cs], "--s", color=col)
        ax_e.plot(e, [c.attack_error for c in cs], "--s", color=col, label=name)
    ax_l.set_xlabel("poisoned fraction eps")
    ax_l.set_ylabel("hinge loss")
    ax_l.set_title("upper bound vs achieved test loss")
    from matplotlib.lines import Line2D

    handles, _ = ax_l.get_legend_handles_labels()
    style = [Line2D([], [], color="gray", ls="-", marker="o", label="upper bound U* (training loss)"),
             Line2D([], [], color="gray", ls="--", marker="s", label="candidate attack: test loss")]
    ax_l.legend(handles=handles + style, fontsize=7)
    ax_e.set_xlabel("poisoned fraction eps")
    ax_e.set_ylabel("test error of the defender's model")
    ax_e.set_title("candidate attack: test error")
    ax_e.legend(fontsize=7)
    for ax in (ax_l, ax_e):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
