"""Report preparation: the data the HTML report shows that needs the model.

The report layer renders; it never runs a model. What it shows about the model's behaviour
(the reversed trigger stamped on clean images, the predictions before and after) is computed
here, once, by :func:`trigger_examples`, and handed to the renderer as a
:class:`TriggerExamples` — plain tensors and lists, also written to ``report.json``.

Stamping follows the trigger convention of :class:`~trojanscope.types.ScanResult`:
``mask`` + ``pattern`` give x' = (1 - m) x + m p (Neural Cleanse, Wang et al. 2019, eq. 2);
a ``pattern`` alone is additive, x' = clip(x + v, 0, 1) (L-RED, Xiang et al. 2020, eq. 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import ImageData
from ..types import ScanResult
from .figures import candidate


@dataclass
class TriggerExamples:
    """A reversed trigger and what it does to clean images.

    Attributes:
        method: the method that reversed the trigger.
        target: the class the trigger was reversed for.
        flagged: whether that method flags the model (False: the most suspicious candidate of a
            method that does not flag it, shown for transparency).
        kind: "mask_pattern" (blend) or "additive".
        mask: [1, H, W] (mask_pattern) or None.
        pattern: [C, H, W].
        images: [n, C, H, W] clean images (none of class ``target``).
        stamped: [n, C, H, W] the same images with the trigger.
        labels: their true classes.
        pred_before, pred_after: the model's predictions on ``images`` / ``stamped``.
        flip_rate: share of the evaluated clean images (``n_evaluated``, none of class
            ``target``) that the trigger sends to ``target``.
        clean_rate: share of those images sent to ``target`` without the trigger.
        n_evaluated: how many clean images the rates are measured on.
        class_names: optional names of the classes.
    """

    method: str
    target: int
    flagged: bool
    kind: str
    mask: torch.Tensor | None
    pattern: torch.Tensor
    images: torch.Tensor
    stamped: torch.Tensor
    labels: list[int]
    pred_before: list[int]
    pred_after: list[int]
    flip_rate: float
    clean_rate: float
    n_evaluated: int
    class_names: list[str] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON part (no image tensors): what the report states about the trigger's effect."""
        return {"method": self.method, "target": self.target, "flagged": self.flagged, "kind": self.kind,
                "labels": list(self.labels), "pred_before": list(self.pred_before),
                "pred_after": list(self.pred_after), "flip_rate": self.flip_rate,
                "clean_rate": self.clean_rate, "n_evaluated": self.n_evaluated}


def stamp(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Apply a reversed trigger to images ``x`` [N, C, H, W] in [0, 1] (see the module docstring)."""
    pattern = pattern.to(x)
    if mask is None:
        return (x + pattern).clamp(0, 1)
    mask = mask.to(x)
    return ((1 - mask) * x + mask * pattern).clamp(0, 1)


def _trigger_of(result: ScanResult, target: int) -> tuple[str, torch.Tensor | None, torch.Tensor] | None:
    trig = result.trigger
    pat = trig.get("pattern")
    if not isinstance(pat, torch.Tensor) or pat.ndim != 4 or not 0 <= target < pat.shape[0]:
        return None
    mask = trig.get("mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[0] == pat.shape[0]:
        return "mask_pattern", mask[target].detach().float().cpu(), pat[target].detach().float().cpu()
    return "additive", None, pat[target].detach().float().cpu()


def choose_trigger(results: Sequence[ScanResult], target: int | None = None) -> tuple[ScanResult, int] | None:
    """The (result, class) whose reversed trigger the report shows.

    A flagging method whose target is ``target`` (or any flagging method when ``target`` is
    None) first; else the most suspicious candidate of the first method with a trigger.
    """
    with_trig = [r for r in results if isinstance(r.trigger.get("pattern"), torch.Tensor)]
    flagged = [r for r in with_trig if r.backdoored and r.target is not None
               and (target is None or r.target == target)]
    if flagged:
        return flagged[0], int(flagged[0].target)  # type: ignore[arg-type]
    for r in with_trig:
        c = target if target is not None else candidate(r)
        if c is not None and _trigger_of(r, c) is not None:
            return r, c
    return None


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    dev = next((p.device for p in model.parameters()), x.device) if hasattr(model, "parameters") else x.device
    out = [model(x[i:i + batch].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def trigger_examples(model: torch.nn.Module, clean: ImageData, results: Sequence[ScanResult], *,
                     target: int | None = None, n: int = 4, n_eval: int = 500,
                     seed: int = 0) -> TriggerExamples | None:
    """Stamp the reversed trigger of ``target`` on clean images and record the model's predictions.

    Args:
        model: the scanned model (logits; not modified: evaluated in eval mode, no gradients).
        clean: clean images, [0, 1].
        results: the scan results; the trigger is chosen by :func:`choose_trigger`.
        target: the combined verdict's target, or None.
        n: how many examples to show (one per class where possible, never of class ``target``).
        n_eval: at most this many clean images for the flip rate.
        seed: seed of the choice of images.

    Returns:
        The examples, or None when no result has a reversed trigger or no clean image is outside
        the target class.
    """
    chosen = choose_trigger(results, target)
    if chosen is None:
        return None
    res, t = chosen
    kind, mask, pattern = _trigger_of(res, t)  # type: ignore[misc]
    others = torch.nonzero(clean.y != t).flatten()
    if len(others) == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    perm = others[torch.randperm(len(others), generator=g)]
    picks: list[int] = []
    seen: set[int] = set()
    for i in perm.tolist():  # one image per class first, then any
        if int(clean.y[i]) not in seen:
            picks.append(i)
            seen.add(int(clean.y[i]))
        if len(picks) == n:
            break
    picks += [i for i in perm.tolist() if i not in picks][: n - len(picks)]
    evaluate = perm[:n_eval]
    x_eval = clean.x[evaluate].float().cpu()
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        before_all = _predict(model, x_eval)
        after_all = _predict(model, stamp(x_eval, pattern, mask))
    finally:
        if was_training:
            model.train(True)
    pos = {int(j): k for k, j in enumerate(evaluate.tolist())}
    x = clean.x[picks].float().cpu()
    idx = [pos[i] for i in picks if i in pos]
    if len(idx) != len(picks):  # n > n_eval: predict the shown images separately
        before, after = _predict(model, x), _predict(model, stamp(x, pattern, mask))
    else:
        before, after = before_all[idx], after_all[idx]
    return TriggerExamples(
        method=res.method, target=t, flagged=bool(res.backdoored and res.target == t), kind=kind,
        mask=mask, pattern=pattern, images=x, stamped=stamp(x, pattern, mask),
        labels=[int(v) for v in clean.y[picks]], pred_before=before.tolist(), pred_after=after.tolist(),
        flip_rate=float((after_all == t).float().mean()), clean_rate=float((before_all == t).float().mean()),
        n_evaluated=len(evaluate), class_names=clean.class_names)
