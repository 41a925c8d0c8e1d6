"""Learning Universal Litmus Patterns from a population of models (Kolouri et al., CVPR 2020).

Eq. (1): ``argmin_{z,h} sum_n L(h(g({f_n(z_m)}_m)), c_n) + lambda sum_m R(z_m)`` with g the
pooling of the M logit vectors (concatenation, or max / mean over m), h a linear softmax
classifier, L the cross-entropy and R(z) = ||grad z||_1 the total variation (sec. 3.3). Random
dropout inside the models augments the population (sec. 3.3, "data augmentation for models").
The "noise input" baseline (sec. 3.4.1) is the same classifier on fixed random patterns.

The M patterns go through all N models at once: models of one architecture are stacked with
``torch.func.stack_module_state`` and run under ``vmap`` (one batched program, not N calls).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._runtime import ProgressFn
from ...errors import InputError
from ...utils import generator

POOLINGS = ("concat", "max", "mean")


def pool_logits(logits: torch.Tensor, pooling: str, sort_logits: bool = False) -> torch.Tensor:
    """g(.) of eq. (1). Args: logits [N, M, K]. Returns [N, M*K] (concat) or [N, K] (max/mean).

    ``sort_logits`` sorts each logit vector (descending) first: h then sees "how peaked" the
    response to each pattern is rather than which class peaks. This makes h invariant to the
    (random) target class, which the paper's raw concatenation must learn from ~1000 models; on
    small zoos it generalises far better (our addition, not in the paper).
    """
    if sort_logits:
        logits = logits.sort(-1, descending=True).values
    if pooling == "concat":
        return logits.flatten(1)
    if pooling == "max":
        return logits.max(1).values
    if pooling == "mean":
        return logits.mean(1)
    raise InputError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")


def total_variation(z: torch.Tensor) -> torch.Tensor:
    """R(z) = ||grad z||_1 summed over the patterns. Args: z [M, C, H, W]."""
    return (z[..., 1:, :] - z[..., :-1, :]).abs().sum() + (z[..., :, 1:] - z[..., :, :-1]).abs().sum()


class _DropoutHooks:
    """Forward hooks that apply dropout after every activation of a module while enabled."""

    def __init__(self, module: nn.Module, p: float) -> None:
        self.p, self.on = p, False
        acts = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid)
        self.handles = [m.register_forward_hook(self._hook) for m in module.modules()
                        if isinstance(m, acts)] if p > 0 else []

    def _hook(self, mod: nn.Module, inp: Any, out: torch.Tensor) -> torch.Tensor | None:
        return F.dropout(out, self.p, training=True) if self.on else None


@dataclass
class _Group:
    index: list[int]
    base: nn.Module
    params: dict[str, torch.Tensor] | None = None
    buffers: dict[str, torch.Tensor] | None = None
    hooks: _DropoutHooks | None = None


class ModelBatch:
    """N frozen models run together on the same inputs: ``batch(z) -> logits [N, M, K]``.

    Models with the same class and parameter shapes are stacked and vmapped; any other model
    (e.g. an ONNX wrapper without parameters) runs on its own. The models are not modified.
    """

    def __init__(self, models: list[nn.Module], dropout: float = 0.0) -> None:
        from torch.func import stack_module_state

        if not models:
            raise InputError("no models given")
        keys: dict[Any, list[int]] = {}
        for i, m in enumerate(models):
            sd = m.state_dict()
            key = (type(m), tuple((k, tuple(v.shape)) for k, v in sd.items())) if sd else ("solo", i)
            keys.setdefault(key, []).append(i)
        self.n = len(models)
        self.groups: list[_Group] = []
        for key, idx in keys.items():
            if key[0] == "solo":
                self.groups.append(_Group(idx, models[idx[0]]))
                continue
            members = [models[i] for i in idx]
            params, buffers = stack_module_state(members)
            params = {k: v.detach() for k, v in params.items()}
            base = copy.deepcopy(members[0]).eval()
            for p in base.parameters():
                p.requires_grad_(False)
            self.groups.append(_Group(idx, base, params, buffers, _DropoutHooks(base, dropout)))

    def __call__(self, z: torch.Tensor, dropout: bool = False) -> torch.Tensor:
        from torch.func import functional_call, vmap

        outs: list[torch.Tensor | None] = [None] * len(self.groups)
        for gi, g in enumerate(self.groups):
            if g.params is None:
                outs[gi] = g.base(z)[None]
                continue
            if g.hooks is not None:
                g.hooks.on = dropout and bool(g.hooks.handles)
            base = g.base

            def f(p: dict, b: dict, x: torch.Tensor, base: nn.Module = base) -> torch.Tensor:
                return functional_call(base, (p, b), (x,))

            rnd = "different" if dropout else "error"
            outs[gi] = vmap(f, in_dims=(0, 0, None), randomness=rnd)(g.params, g.buffers, z)
        order = [i for g in self.groups for i in g.index]
        out = torch.cat(outs)  # type: ignore[arg-type]
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return out[inv.to(out.device)]


@dataclass
class ULPFit:
    """What :func:`fit_ulp` learned: patterns [M, C, H, W], classifier weight [2, D], bias [2]."""

    patterns: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def fit_ulp(models: list[nn.Module], labels: torch.Tensor, in_shape: tuple[int, int, int], *,
            n_patterns: int = 10, pooling: str = "concat", sort_logits: bool = True,
            steps: int = 500, lr: float = 0.01,
            lr_classifier: float = 0.01, tv_weight: float = 1e-5, model_dropout: float = 0.1,
            learn_patterns: bool = True, seed: int = 0, progress: ProgressFn | None = None
            ) -> ULPFit:
    """Optimise eq. (1) jointly over the patterns z and the classifier h (Adam, full batch).

    Args:
        models: N training models (clean and poisoned), each returning logits [*, K].
        labels: [N], 1 = poisoned, 0 = clean.
        in_shape: (C, H, W) of the models' input.
        n_patterns: M.
        pooling: "concat" (the paper's choice, h sees M*K values), "max" or "mean" over m.
        sort_logits: sort each logit vector before pooling (see :func:`pool_logits`).
        steps: optimisation steps over the whole population.
        lr, lr_classifier: Adam step sizes of the patterns and of h.
        tv_weight: lambda of the total-variation regulariser.
        model_dropout: dropout probability after each activation of the models (augmentation).
        learn_patterns: False gives the "noise input" baseline (fixed uniform patterns; only h is
            trained, on logits computed once without dropout, as in sec. 3.4.1).
        seed: pattern initialisation, classifier initialisation and dropout.
        progress: called every 50 steps with {"step", "loss", "accuracy"}.
    """
    import time

    labels = torch.as_tensor(labels).long()
    if len(models) != len(labels):
        raise InputError(f"{len(models)} models but {len(labels)} labels")
    if set(labels.tolist()) != {0, 1}:
        raise InputError("training a ULP needs both clean (0) and poisoned (1) models")
    if n_patterns < 1 or steps < 1:
        raise InputError("n_patterns and steps must be >= 1")
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    t0 = time.perf_counter()
    g = generator(seed)
    torch.manual_seed(seed)  # dropout inside vmap draws from the global generator
    batch = ModelBatch(models, dropout=model_dropout)
    z = torch.rand(n_patterns, *in_shape, generator=g)
    with torch.no_grad():
        k = int(batch(z[:1]).shape[-1])
    d = n_patterns * k if pooling == "concat" else k
    h = nn.Linear(d, 2)
    with torch.no_grad():
        h.weight.copy_(torch.randn(2, d, generator=g) / d**0.5)
        h.bias.zero_()
    z.requires_grad_(learn_patterns)
    opt_h = torch.optim.Adam(h.parameters(), lr=lr_classifier)
    opt_z = torch.optim.Adam([z], lr=lr) if learn_patterns else None
    history: list[dict[str, float]] = []
    fixed = None
    if not learn_patterns:  # noise input: the logits never change, compute them once
        with torch.no_grad():
            fixed = pool_logits(batch(z), pooling, sort_logits)
    for step in range(1, steps + 1):
        feats = fixed if fixed is not None else pool_logits(
            batch(z, dropout=model_dropout > 0), pooling, sort_logits)
        out = h(feats)
        loss = F.cross_entropy(out, labels)
        total = loss + tv_weight * total_variation(z) if learn_patterns else loss
        opt_h.zero_grad(set_to_none=True)
        if opt_z is not None:
            opt_z.zero_grad(set_to_none=True)
        total.backward()
        opt_h.step()
        if opt_z is not None:
            opt_z.step()
            with torch.no_grad():
                z.clamp_(0, 1)  # patterns stay valid images in [0, 1]
        if step % 50 == 0 or step == steps:
            rec = {"step": step, "loss": float(loss.detach()),
                   "accuracy": float((out.argmax(1) == labels).float().mean())}
            history.append(rec)
            if progress is not None:
                progress(rec)
    return ULPFit(z.detach(), h.weight.detach().clone(), h.bias.detach().clone(), history,
                  time.perf_counter() - t0)


def roc_summary(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """AUC and ROC curve of P(poisoned) ``scores`` [N] against ``labels`` [N] (1 = poisoned)."""
    from ...metrics import roc_auc, roc_curve

    labels = torch.as_tensor(labels).bool()
    if labels.all() or not labels.any():
        raise InputError("an ROC curve needs both clean and poisoned models")
    neg, pos = scores[~labels], scores[labels]
    fpr, tpr, _ = roc_curve(neg, pos)
    return {"auc": roc_auc(neg, pos), "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "accuracy_at_0.5": float(((scores > 0.5) == labels).float().mean()),
            "n_clean": int((~labels).sum()), "n_poisoned": int(labels.sum())}


def plot_ulp(path: str, patterns: torch.Tensor, curves: dict[str, dict[str, Any]],
             title: str = "") -> str:
    """PNG with the learned patterns (top row) and ROC curves (bottom).

    Args:
        path: output PNG.
        patterns: [M, C, H, W] in [0, 1] (at most 10 drawn).
        curves: label -> {"fpr", "tpr", "auc"}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...utils import atomic_path

    m = min(len(patterns), 10)
    fig = plt.figure(figsize=(max(6.0, 1.2 * m), 6.5))
    gs = fig.add_gridspec(2, m, height_ratios=[1, 3.2])
    for i in range(m):
        ax = fig.add_subplot(gs[0, i])
        img = patterns[i].detach().cpu().permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"z{i + 1}", fontsize=8)
    ax = fig.add_subplot(gs[1, :])
    for label, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=f"{label} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate (clean models flagged)")
    ax.set_ylabel("true positive rate (poisoned models found)")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
