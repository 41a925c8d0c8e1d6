"""Adversarial bias maps: Borji, "Adversarial examples are useful too!" (arXiv 2005.06107).

Craft targeted adversarial examples against the model with iterated FGSM, average them per
predicted class ("bias maps") and compare them with the bias maps of a clean reference model of
the same task (e.g. the backbone the model was fine-tuned from). A backdoor shows up as its
trigger in the target class's map and as an outlying map-to-map distance for that class.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..._params import Constraint, InstanceOf, Interval, Options
from ..._registry import register
from ..._validate import check_logits
from ...data import ImageData
from ...errors import InputError
from ...models._logits import ensure_logits
from ...types import ScanResult
from ...utils import generator, model_device
from ._base import ModelDetector, ProgressFn, frozen
from ._stats import ANOMALY_THRESHOLD, max_index_pvalue, robust_z

_INPUTS = ("blank", "noise", "data")
# Algorithm II: (source, prediction) cells reached by fewer than this share of the examples of a
# pair (in either model) are left out of the distances
_MIN_CELL = 0.2


def fgsm_steps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, source: torch.Tensor | None,
               *, eps: float, iterations: int) -> torch.Tensor:
    """Iterated targeted FGSM (Borji eq. 1; eq. 2 when ``source`` is given), clipped to [0, 1].

    Eq. 1: ``x <- clip(x - eps * sign(grad_x J(x, y_target)))`` with J the cross-entropy.
    Eq. 2: the same with ``J(x, y_target) - J(x, y_source)``; the log-sum-exp terms of the two
    cross-entropies cancel, so the objective is ``z_source - z_target`` (logits z).

    Args:
        model: frozen classifier returning logits.
        x: starting images [N, C, H, W] in [0, 1] (not modified).
        target: target class per image [N].
        source: source class per image [N], or None for eq. 1.
        eps: step size in [0, 1].
        iterations: number of FGSM steps (I-FGSM, Kurakin et al. 2016).

    Returns:
        The adversarial images [N, C, H, W].
    """
    x = x.detach().clone()
    for _ in range(iterations):
        x.requires_grad_(True)
        logits = model(x)
        if source is None:
            loss = F.cross_entropy(logits, target, reduction="sum")
        else:
            loss = (logits.gather(1, source[:, None]) - logits.gather(1, target[:, None])).sum()
        (grad,) = torch.autograd.grad(loss, x)
        x = (x.detach() - eps * grad.sign()).clamp_(0.0, 1.0)
    return x.detach()


@register("model_detector", "bias_maps")
class BiasMaps(ModelDetector):
    """Bias maps of targeted adversarial examples (Borji, Algorithms I and II, eqs. 1-2, Fig. 8).

    Algorithm I: for every target class t and every starting input, run ``iterations`` targeted
    FGSM steps (eq. 1); record each result under the class the model predicts; the bias map of a
    class is the mean of the results recorded under it, and "ratio pred" of t is the fraction of
    the examples aimed at t that reached it. Algorithm II: for every (source, target) pair, the
    step of eq. 2; results are averaged per (source, prediction).

    The same maps are computed for ``reference`` from the same starting inputs, and the per-class
    Euclidean distance between the two models' maps (Fig. 8) is scored with a robust z-score
    (median / MAD): the class with an outlying distance is reported as the target (and, for
    Algorithm II, the rows with outlying distance as sources). Without a reference, each class map
    is compared with the mean map of the other classes; that comparison also sees the ordinary
    differences between digits, so the result is weaker.

    All classes, pairs and samples are one batched tensor program (chunked by ``batch_size``).
    The reference's maps are kept in ``reference_maps_`` and reused while the reference, the
    parameters and the starting inputs stay the same (one backbone, many fine-tuned models).

    Args:
        reference: a clean model of the same task (e.g. the backbone the model was fine-tuned
            from), or None. It is data-like, but the CLI (``--reference``) and the fixed
            ``scan(model, clean)`` signature need it here. It is frozen during the scan and never
            modified; it must take the same inputs and return the same number of classes.
        inputs: starting points of the attack: "blank" (an all-zero image), "noise" (uniform
            white noise) or "data" (the clean images given to ``scan``, labels unused). A blank
            start is deterministic: with ``n_samples=1`` it is the paper's single blank image;
            with more, every copy gets a random start uniform in [0, eps] (PGD's initialisation;
            the paper notes that more blank samples change the outcome, Fig. 3).
        algorithm: "I" (targeted, eq. 1) or "II" (source/target pairs, eq. 2). Algorithm II
            scores a class by the mean distance of its column over the (source, prediction)
            cells that at least 20% of a pair's examples reached in both models.
        n_samples: starting inputs per target class (per pair for Algorithm II). Paper: 1000.
        iterations: FGSM steps (paper default 10).
        eps: FGSM step size (paper default 0.1; "moderate values lead to better results").
        threshold: robust z-score (median / MAD; 2 as Neural Cleanse) above which a class's
            distance is an outlier.
        min_ratio: the outlying distance must also be at least this multiple of the median
            distance. Fine-tuning on clean data moves every map a little; when those moves are
            nearly equal the MAD is tiny and a 20% difference would score a large z (clean
            fine-tunes of the digits models reached 1.5x the median; backdoored ones ~1.8-2.3x).
            The result's ``statistic`` is the smaller margin, ``min(z / threshold, distance /
            median / min_ratio)`` of the most distant class (per class: ``per_class["score"]``),
            so its ``threshold`` is 1; ``anomaly_index`` is that class's z.
        batch_size: images per forward/backward pass (memory bound only).
        seed: choice of noise / data samples.
    """

    # without a reference it compares classes with each other, which clean models also fail:
    # the automatic selection runs it only when a reference model is given
    needs = ("reference",)

    def __init__(self, *, reference: nn.Module | None = None, inputs: str = "data",
                 algorithm: str = "I", n_samples: int = 1000, iterations: int = 10,
                 eps: float = 0.1, threshold: float = ANOMALY_THRESHOLD, min_ratio: float = 1.75,
                 batch_size: int = 1024, seed: int = 0) -> None:
        self.reference = reference
        self.inputs = inputs
        self.algorithm = algorithm
        self.n_samples = n_samples
        self.iterations = iterations
        self.eps = eps
        self.threshold = threshold
        self.min_ratio = min_ratio
        self.batch_size = batch_size
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        params = super().get_params()
        ref = params.get("reference")
        params["reference"] = None if ref is None else type(ref).__name__
        return params

    # ------------------------------------------------------------------ checks and inputs

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "reference": [InstanceOf(nn.Module, what="a torch.nn.Module"), None],
        "inputs": [Options(_INPUTS)],
        "algorithm": [Options(("I", "II", "1", "2"), normalize=lambda v: str(v).upper())],
        "n_samples": [Interval(int, 1, None)],
        "iterations": [Interval(int, 1, None)],
        "eps": [Interval(float, 0, 1, closed="right")],
        "threshold": [Interval(float, 0, None, closed="neither")],  # both divide the statistic
        "min_ratio": [Interval(float, 0, None, closed="neither")],
        "batch_size": [Interval(int, 1, None)],
        "seed": [Interval(int, 0, None)],
    }

    def _starts(self, clean: ImageData) -> torch.Tensor:
        """The starting inputs [S, C, H, W], shared by every class and by both models."""
        shape = clean.in_shape
        g = generator(self.seed)
        n = int(self.n_samples)
        if self.inputs == "blank":
            # one blank image is deterministic; several get PGD's random start in [0, eps]
            # (Madry et al. 2018), so that their mean is a map rather than one saturated image
            return torch.zeros(1, *shape) if n == 1 else torch.rand(n, *shape, generator=g) * float(self.eps)
        if self.inputs == "noise":
            return torch.rand(n, *shape, generator=g)
        idx = (torch.randperm(len(clean), generator=g)[:n] if n <= len(clean)
               else torch.randint(0, len(clean), (n,), generator=g))
        return clean.x[idx.to(clean.x.device)].cpu()

    # ------------------------------------------------------------------ the maps

    def _maps(self, model: nn.Module, starts: torch.Tensor, num_classes: int,
              progress: ProgressFn | None, which: str) -> dict[str, torch.Tensor]:
        """Bias maps of one model. Returns maps/ratio (and counts) as CPU tensors.

        Algorithm I: maps [K, C, H, W] per predicted class, ratio [K] (targeted hit rate).
        Algorithm II: maps [K, K, C, H, W] per (source, prediction), ratio [K, K] (hit rate of pair).
        """
        dev = model_device(model)
        k, s = num_classes, len(starts)
        two = str(self.algorithm).upper() in ("II", "2")
        if two:
            src, tgt = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
            keep = src != tgt
            src, tgt = src[keep], tgt[keep]  # [P] pairs, P = K(K-1)
        else:
            tgt = torch.arange(k)
            src = None
        n_groups = len(tgt)
        total = n_groups * s
        feat = starts[0].numel()
        cells = k * k if two else k
        sums = torch.zeros(cells, feat, dtype=torch.float64)
        counts = torch.zeros(cells, dtype=torch.float64)
        # fallback map of a cell nobody was predicted into: the mean of the examples aimed at it
        aim_sums = torch.zeros(cells, feat, dtype=torch.float64)
        aim_counts = torch.zeros(cells, dtype=torch.float64)
        hits = torch.zeros(n_groups, dtype=torch.float64)
        bs = int(self.batch_size)
        for lo in range(0, total, bs):
            flat = torch.arange(lo, min(lo + bs, total))
            group, sample = flat // s, flat % s
            x0 = starts[sample].to(dev)
            t = tgt[group].to(dev)
            sr = src[group].to(dev) if two else None
            with torch.enable_grad():
                xa = fgsm_steps(model, x0, t, sr, eps=float(self.eps), iterations=int(self.iterations))
            with torch.no_grad():
                pred = model(xa).argmax(1).cpu()
            xa = xa.flatten(1).cpu().double()
            row = src[group] * k if two else torch.zeros_like(group)
            cell = row + pred
            aim = row + tgt[group]
            sums.index_add_(0, cell, xa)
            counts.index_add_(0, cell, torch.ones(len(flat), dtype=torch.float64))
            aim_sums.index_add_(0, aim, xa)
            aim_counts.index_add_(0, aim, torch.ones(len(flat), dtype=torch.float64))
            hits.index_add_(0, group, (pred == tgt[group]).double())
            if progress is not None:
                progress({"model": which, "done": int(flat[-1]) + 1, "total": total})
        maps = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None],
                           aim_sums / aim_counts.clamp_min(1)[:, None])
        ratio = hits / s
        shape = tuple(starts.shape[1:])
        if two:
            r = torch.full((k, k), float("nan"), dtype=torch.float64)
            r[src, tgt] = ratio
            return {"maps": maps.float().reshape(k, k, *shape), "ratio": r.float(),
                    "counts": counts.reshape(k, k)}
        return {"maps": maps.float().reshape(k, *shape), "ratio": ratio.float(), "counts": counts}

    def _check_reference(self, clean: ImageData, num_classes: int) -> nn.Module:
        ref = self.reference
        x = clean.x[:2].to(model_device(ref))
        try:
            with torch.no_grad():
                out = ref(x)
        except RuntimeError as e:
            raise InputError(f"the reference model cannot process images of shape "
                             f"{tuple(clean.x.shape[1:])}: {str(e).splitlines()[0]}") from None
        check_logits(out, len(x))
        if out.shape[1] != num_classes:
            raise InputError(f"the reference model has {out.shape[1]} classes but the scanned model "
                             f"has {num_classes}")
        return ensure_logits(ref, x)

    # ------------------------------------------------------------------ the scan

    def _scan(self, model: nn.Module, clean: ImageData, num_classes: int,
              progress: ProgressFn | None) -> ScanResult:
        two = str(self.algorithm).upper() in ("II", "2")
        starts = self._starts(clean)
        ours = self._maps(model, starts, num_classes, progress, "model")
        k = num_classes
        if self.reference is not None:
            # the reference's maps depend only on it, the parameters and the starting inputs:
            # scanning many models against one backbone computes them once
            key = (id(self.reference), self.inputs, str(self.algorithm).upper(), int(self.iterations),
                   float(self.eps), num_classes, tuple(starts.shape), float(starts.double().sum()),
                   float((starts.double() ** 2).sum()))
            cached = getattr(self, "reference_maps_", None)
            if cached is not None and cached[0] == key:
                theirs = cached[1]
            else:
                with frozen(self.reference):
                    ref = self._check_reference(clean, num_classes)
                    theirs = self._maps(ref, starts, num_classes, progress, "reference")
                self.reference_maps_ = (key, theirs)
            comparison = "reference"
        else:
            theirs = None
            comparison = "other classes (no reference: weaker)"

        extra: dict[str, Any] = {"comparison": comparison, "n_starts": len(starts),
                                 "algorithm": "II" if two else "I"}
        per_class: dict[str, torch.Tensor] = {}
        trigger: dict[str, torch.Tensor] = {}
        sources: list[int] = []
        m = ours["maps"]
        if not two:
            # [K, C, H, W]; without a reference: the leave-one-out mean of the other classes' maps
            r = theirs["maps"] if theirs is not None else (m.sum(0, keepdim=True) - m) / max(k - 1, 1)
            dist = (m - r).flatten(1).norm(dim=1)  # Fig. 8
            per_class["ratio_pred"] = ours["ratio"]
            if theirs is not None:
                per_class["reference_ratio_pred"] = theirs["ratio"]
            trigger["bias_maps"], trigger["reference_maps"] = m, r
        else:
            # [K(source), K(prediction), C, H, W]
            r = theirs["maps"] if theirs is not None else (m.sum(1, keepdim=True) - m) / max(k - 1, 1)
            off = ~torch.eye(k, dtype=torch.bool)
            # a cell that few examples reached (classes hard to reach from noise) is a mean of a
            # handful of saturated images: pure noise, so it is left out of the scores
            counts = ours["counts"] if theirs is None else torch.minimum(ours["counts"], theirs["counts"])
            valid = off & (counts >= max(2.0, _MIN_CELL * len(starts)))
            pair = torch.where(valid, (m - r).flatten(2).norm(dim=2), torch.zeros(()))  # [K, K]
            dist = pair.sum(0) / valid.sum(0).clamp_min(1)  # a target lights up its column (Fig. 9)
            per_class["ratio_pred"] = torch.nanmean(ours["ratio"], dim=0)
            extra["pair_distance"] = pair
            extra["pair_counts"] = counts
            extra["pair_ratio_pred"] = ours["ratio"]
            w = off.float()[:, :, None, None, None] / (k - 1)
            trigger["bias_maps"] = (m * w).sum(0)  # per prediction, mean over the other sources
            trigger["reference_maps"] = (r * w).sum(0)
            trigger["pair_maps"] = m.flatten(0, 1)
            trigger["reference_pair_maps"] = r.flatten(0, 1)
        z = robust_z(dist).float()
        med = float(dist.median())
        ratio = dist / med if med > 0 else torch.full_like(dist, math.inf)
        # one statistic for the two-part rule (z > threshold and distance/median >= min_ratio):
        # the smaller of the two margins; both grow with the distance, so its argmax is the
        # most distant class, and the model is flagged exactly when it exceeds 1
        score = torch.minimum(z / float(self.threshold), ratio / float(self.min_ratio))
        target = int(score.argmax())
        stat, z_t, ratio_t = float(score[target]), float(z[target]), float(ratio[target])
        backdoored = z_t > float(self.threshold) and ratio_t >= float(self.min_ratio)
        per_class.update(score=score, distance=dist, z=z)
        if two:
            # a source row lights up outside the target column (Fig. 9)
            keep = valid.clone()
            keep[:, target] = False
            row = (pair * keep).sum(1) / keep.sum(1).clamp_min(1)
            others = [i for i in range(k) if i != target]
            rz = torch.zeros(k)
            rz[others] = robust_z(row[others]).float()
            sources = [i for i in others if float(rz[i]) > float(self.threshold)]
            per_class.update(source_distance=row, source_z=rz)
        extra.update(most_distant_class=target, distance_over_median=ratio_t, z=z_t,
                     verdict_rule=f"score = min(z / {self.threshold:g}, distance/median / {self.min_ratio:g}) "
                                  f"> 1 (here z = {z_t:.2f}, distance/median = {ratio_t:.2f}, score = {stat:.2f})")
        # p-value of the z part (the largest robust z of K values under a Gaussian null, simulated),
        # set to 1 when the distance/median part of the rule fails: still a valid p-value (it
        # can only grow), and it never contradicts the two-part rule
        # (z of the most distant class <= the largest z: conservative)
        p_value = max_index_pvalue(z_t, k, "large") if ratio_t >= float(self.min_ratio) else 1.0
        extra["p_value_calibration"] = ("empirical null of the largest robust z among K i.i.d. normal "
                                        "distances (simulated); 1 when distance/median < min_ratio")
        return ScanResult(
            method="bias_maps", backdoored=backdoored, target=target if backdoored else None,
            sources=sources if backdoored else [], statistic=stat, anomaly_index=z_t, threshold=1.0,
            statistic_key="score",
            p_value=p_value,
            per_class={name: v.tolist() for name, v in per_class.items()},
            trigger=trigger,
            extra={name: (v.tolist() if isinstance(v, torch.Tensor) else v) for name, v in extra.items()},
        )
