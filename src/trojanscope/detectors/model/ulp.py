"""Universal Litmus Patterns (Kolouri, Saha, Pirsiavash, Hoffmann, "Universal Litmus Patterns:
Revealing Backdoor Attacks in CNNs", CVPR 2020).

M input patterns z_m and a linear softmax classifier h are learned from a zoo of clean and
poisoned models (eq. 1, see ``_ulp_train``); scanning a new model is one forward pass of the M
patterns, pooling of the M logit vectors and h: ``P(poisoned) = softmax(h(g({f(z_m)})))_1``.
Forward-only: works on any model that returns logits, ONNX included.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..._params import Constraint, InstanceOf, Interval
from ..._registry import register
from ..._validate import check_logits
from ...data import ImageData
from ...errors import InputError, ModelFileError
from ...types import ScanResult
from ...utils import atomic_path, model_device
from ._base import ModelDetector, ProgressFn
from ._ulp_train import POOLINGS, ModelBatch, fit_ulp, pool_logits

FORMAT = "trojanscope-ulp"
META_KEY = "trojanscope_ulp"


@dataclass
class LitmusPatterns:
    """A trained ULP detector file's content.

    Attributes:
        patterns: z, [M, C, H, W] in [0, 1].
        weight: classifier h weight [2, D] (D = M*K for concat pooling, K for max/mean).
        bias: classifier h bias [2].
        pooling: "concat", "max" or "mean".
        sort_logits: each logit vector is sorted before pooling (class-permutation invariant).
        num_classes: K, the number of classes of the models it was trained on.
        in_shape: (C, H, W) of those models' input.
        dataset: the dataset those models were trained on (informative).
        noise_input: True for the noise-input baseline (patterns not optimised).
        threshold: decision threshold on P(poisoned).
        info: training record (zoo, counts, AUCs, history).
    """

    patterns: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    pooling: str = "concat"
    sort_logits: bool = True
    num_classes: int = 10
    in_shape: tuple[int, int, int] = (1, 28, 28)
    dataset: str = ""
    noise_input: bool = False
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_patterns(self) -> int:
        return int(self.patterns.shape[0])

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """P(poisoned) [N] from the models' logits on the patterns, [N, M, K]."""
        w, b = self.weight.to(logits), self.bias.to(logits)
        return torch.softmax(pool_logits(logits, self.pooling, self.sort_logits) @ w.T + b, dim=1)[:, 1]

    def score_models(self, models: list[nn.Module]) -> torch.Tensor:
        """P(poisoned) [N] of many models at once (stacked and vmapped when they share an
        architecture)."""
        with torch.no_grad():
            return self.probability(ModelBatch(models)(self.patterns))

    def save(self, path: str | Path) -> Path:
        """One ``.safetensors`` file: the tensors, and the rest as JSON in its metadata."""
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "version": 1, "pooling": self.pooling,
                "sort_logits": self.sort_logits,
                "num_classes": self.num_classes, "in_shape": list(self.in_shape),
                "dataset": self.dataset, "noise_input": self.noise_input,
                "threshold": self.threshold, "info": self.info}
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file({"patterns": self.patterns.contiguous(), "weight": self.weight.contiguous(),
                       "bias": self.bias.contiguous()}, str(tmp),
                      metadata={META_KEY: json.dumps(meta)})
        return path


_CACHE: dict[tuple[str, int, int], LitmusPatterns] = {}


def load_ulp(path: str | Path) -> LitmusPatterns:
    """Read a ULP file written by :meth:`LitmusPatterns.save` (weights only, never unpickles)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"ULP file {p} does not exist; train one with `trojanscope ulp train`")
    st = os.stat(p)
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            t = {k: f.get_tensor(k) for k in ("patterns", "weight", "bias")}
    except Exception as e:  # noqa: BLE001 - any damage is the same user error
        raise ModelFileError(f"{p} is not a trojanscope ULP file ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{p} is not a trojanscope ULP file")
    ulp = LitmusPatterns(t["patterns"].float(), t["weight"].float(), t["bias"].float(),
                         meta["pooling"], bool(meta.get("sort_logits", False)),
                         int(meta["num_classes"]), tuple(meta["in_shape"]),
                         meta.get("dataset", ""), bool(meta.get("noise_input", False)),
                         float(meta.get("threshold", 0.5)), meta.get("info", {}))
    _CACHE.clear()
    _CACHE[key] = ulp
    return ulp


def train_ulp(models: list[nn.Module], labels: torch.Tensor, *, num_classes: int,
              in_shape: tuple[int, int, int], dataset: str = "", n_patterns: int = 10,
              pooling: str = "concat", sort_logits: bool = True, steps: int = 500, lr: float = 0.01,
              lr_classifier: float = 0.01, tv_weight: float = 1e-5, model_dropout: float = 0.1,
              noise_input: bool = False, seed: int = 0, progress: ProgressFn | None = None
              ) -> LitmusPatterns:
    """Learn ULPs (eq. 1) on training models; ``noise_input=True`` gives the noise baseline.

    See :func:`~trojanscope.detectors.model._ulp_train.fit_ulp` for the arguments.
    """
    fit = fit_ulp(models, labels, tuple(in_shape), n_patterns=n_patterns, pooling=pooling,
                  sort_logits=sort_logits, steps=steps, lr=lr, lr_classifier=lr_classifier, tv_weight=tv_weight,
                  model_dropout=model_dropout, learn_patterns=not noise_input, seed=seed,
                  progress=progress)
    labels = torch.as_tensor(labels)
    info = {"n_train_models": len(models), "n_poisoned": int(labels.sum()), "steps": steps,
            "lr": lr, "lr_classifier": lr_classifier, "tv_weight": tv_weight,
            "model_dropout": model_dropout, "seed": seed, "seconds": fit.seconds,
            "history": fit.history}
    return LitmusPatterns(fit.patterns, fit.weight, fit.bias, pooling, sort_logits, int(num_classes),
                          tuple(in_shape), dataset, noise_input, 0.5, info)


@register("model_detector", "ulp")
class ULP(ModelDetector):
    """Scan with trained Universal Litmus Patterns: one forward pass of the M patterns.

    Args:
        ulp_path: the ``.safetensors`` file from ``trojanscope ulp train`` (CLI ``--ulp FILE``).
        threshold: decision threshold on P(poisoned); None = the one stored in the file (0.5).
    """

    needs_gradients = False
    needs = ("ulp",)
    needs_data = False  # the litmus patterns are the inputs: no clean image is used

    @classmethod
    def unavailable(cls, context: dict[str, Any]) -> str | None:
        """ULP runs only with a ULP file trained for this input shape and class count."""
        path = context.get("ulp")
        if path is None:
            return "needs a trained ULP file (--ulp FILE)"
        ulp = load_ulp(path)
        shape, k = context.get("in_shape"), context.get("num_classes")
        if shape is not None and tuple(shape) != tuple(ulp.in_shape):
            return f"the ULP file is for input {tuple(ulp.in_shape)}, the model takes {tuple(shape)}"
        if k is not None and int(k) != int(ulp.num_classes):
            return f"the ULP file is for {ulp.num_classes}-class models, the model has {k}"
        return None

    def __init__(self, *, ulp_path: str | Path | None = None, threshold: float | None = None
                 ) -> None:
        self.ulp_path = ulp_path
        self.threshold = threshold

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "ulp_path": [InstanceOf(str, os.PathLike, what="a file path"), None],
        "threshold": [Interval(float, 0, 1), None],  # on P(poisoned)
    }

    def _scan(self, model: nn.Module, clean: ImageData, num_classes: int,
              progress: ProgressFn | None) -> ScanResult:
        return self._scan_without_data(model, clean.in_shape, num_classes, progress)

    def _scan_without_data(self, model: nn.Module, in_shape: tuple[int, int, int], num_classes: int,
                           progress: ProgressFn | None) -> ScanResult:
        if self.ulp_path is None:
            raise InputError("the ulp method needs a trained ULP file: --ulp FILE (ulp_path=...); "
                             "make one with `trojanscope ulp train`")
        ulp = load_ulp(self.ulp_path)
        if tuple(in_shape) != tuple(ulp.in_shape):
            raise InputError(f"the ULP file {self.ulp_path} was trained for {ulp.dataset or 'models'}"
                             f" with input {tuple(ulp.in_shape)}, but this model takes "
                             f"{tuple(in_shape)}")
        if num_classes != ulp.num_classes:
            raise InputError(f"the ULP file {self.ulp_path} was trained for {ulp.num_classes}-class "
                             f"models ({ulp.dataset}), but this model has {num_classes} classes")
        z = ulp.patterns.to(model_device(model))
        with torch.no_grad():
            logits = check_logits(model(z), len(z), num_classes)  # the one batched forward pass
            p = float(ulp.probability(logits[None])[0])
        thr = float(ulp.threshold if self.threshold is None else self.threshold)
        raw = ulp.info.get("clean_scores") if isinstance(ulp.info, dict) else None
        null = [float(v) for v in raw if isinstance(v, (int, float))] if isinstance(raw, list) else []
        # empirical p-value on the held-out clean models of the zoo (a conformal p-value:
        # valid when the scanned clean model is exchangeable with them)
        p_value = (1 + sum(v >= p for v in null)) / (1 + len(null)) if null else None
        return ScanResult(method="ulp", backdoored=p > thr, statistic=p, threshold=thr,
                          statistic_key="probability_poisoned",
                          p_value=p_value,
                          extra={"p_value_calibration": (
                                     f"empirical: rank of P(poisoned) among {len(null)} held-out clean "
                                     "zoo models" if null else "none: the ULP file records no clean "
                                     "test-zoo scores (retrain it with a test split)"),
                                 "probability_poisoned": p, "n_patterns": ulp.n_patterns,
                                 "pooling": ulp.pooling,
                                 "sort_logits": ulp.sort_logits, "noise_input": ulp.noise_input,
                                 "trained_on": ulp.dataset})


__all__ = ["POOLINGS", "LitmusPatterns", "ULP", "load_ulp", "train_ulp"]
