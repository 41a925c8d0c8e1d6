"""The front-door workflows: one call per user question, one typed report per call.

    report = scan_model(model, clean)            # "is this model backdoored?"
    report.verdict.verdict                       # "clean" | "backdoored" | "inconclusive"
    report.exit_code                             # 0 | 1 | 3, what `trojanscope scan` exits with
    report.to_dict()                             # the JSON report (envelope + methods + verdict)

    guard_inputs(model, clean, suspect_x)        # "does this input carry a trigger?"
    repair_model(model, clean, "unlearn")     # "can the backdoor be removed?"

Every report carries the same envelope: ``model``, ``data``, ``parameters``, ``versions``,
``timings`` (and ``created``, ``schema``, ``kind``; :class:`Envelope`). The ``scan``, ``inputs``
and ``mitigate`` commands, ``scan-many`` and the demo are thin layers over these functions; a
benchmark that measures one method calls that method directly.

:func:`scan_model` runs, in order:

1. the **sanity gate** (:func:`sanity_check`): the model's accuracy on the scan images. When it
   is near chance or far below the accuracy recorded in the model's sidecar, the common input
   conventions are tried and the one that fits is named; the verdict is then
   ``inconclusive`` and no detector runs (a detector on a model that does not classify the data
   answers a different question);
2. the **methods**: ``"auto"`` selects every registered model detector that applies
   (:func:`select_methods`: gradients available, the resources it ``needs`` given, not
   experimental); explicit names run as asked;
3. the **combined verdict** (:func:`trojanscope.combine.combine_evidence`): each method's
   calibrated p-value, combined with the Cauchy rule (valid under dependence).
"""

from __future__ import annotations

import datetime as _dt
import inspect
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ._runtime import (
    CleanData,
    ProgressFn,
    as_image_data,
    check_model,
    frozen,
    memory_layout,
    prepared,
    probe_num_classes,
    resolve_layout,
)
from .combine import CombinedVerdict, Evidence, combine_evidence
from .data import ImageData
from .errors import InputError, TrojanscopeError
from .types import InputScores, MitigationResult, ScanResult
from .utils import model_device, to_jsonable, versions

if TYPE_CHECKING:
    from .mitigations._base import Mitigation

#: Version of the report layout written by ``to_dict()`` (the JSON Schema under report/ follows it).
REPORT_SCHEMA = 2

#: How a resource named in ``ModelDetector.needs`` reaches the detector's parameters.
RESOURCE_PARAMS = {"reference": "reference", "ulp": "ulp_path"}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _json(d: dict[str, Any]) -> dict[str, Any]:
    """:func:`~trojanscope.utils.to_jsonable` of a dict (which stays a dict)."""
    out: dict[str, Any] = to_jsonable(d)
    return out


def _emit(progress: ProgressFn | None, **info: Any) -> None:
    if progress is not None:
        progress(info)


# ------------------------------------------------------------------------------------ envelope

def describe_model(model: nn.Module, path: str | Path | None = None) -> dict[str, Any]:
    """The envelope's ``model`` entry.

    File, architecture, classes, input shape and what its sidecar records (dataset, accuracy,
    normalisation).
    """
    raw = getattr(model, "metadata", None)
    meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
    metrics: dict[str, Any] = meta["metrics"] if isinstance(meta.get("metrics"), dict) else {}
    acc = metrics.get("cta") if isinstance(metrics.get("cta"), (int, float)) else None
    norm = getattr(model, "normalize", None)
    in_shape = getattr(model, "in_shape", None)
    return _json({
        "path": None if path is None else str(path),
        "name": Path(path).name if path is not None else meta.get("file", type(model).__name__),
        "arch": getattr(model, "arch", None) or type(model).__name__,
        "num_classes": getattr(model, "num_classes", None),
        "in_shape": list(in_shape) if in_shape else None,
        "forward_only": bool(getattr(model, "forward_only", False)),
        "normalize": None if norm is None else {"mean": norm.mean.flatten().tolist(),
                                                "std": norm.std.flatten().tolist()},
        "sidecar": {"dataset": meta.get("dataset") if isinstance(meta.get("dataset"), str) else None,
                    "accuracy": float(acc) if acc is not None else None},
    })


def describe_data(data: ImageData | None, **info: Any) -> dict[str, Any]:
    """The envelope's ``data`` entry."""
    if data is None:
        return {"name": info.pop("name", None), "n_images": 0, **info}
    counts = torch.bincount(data.y.cpu(), minlength=data.num_classes).tolist()
    return _json({"name": info.pop("name", data.name), "n_images": len(data),
                  "num_classes": data.num_classes, "in_shape": list(data.in_shape),
                  "per_class": counts, **info})


@dataclass(kw_only=True)
class Envelope:
    """What every workflow report carries (keyword-only fields, after each report's own).

    Attributes:
        model: :func:`describe_model` of the model.
        data: :func:`describe_data` of the clean images.
        parameters: every setting of the run (methods and their parameters, seed, device, ...).
        timings: seconds per stage and ``total``.
        versions: library versions (:func:`~trojanscope.utils.versions`).
        created: ISO-8601 UTC time the report was made.
    """

    kind: ClassVar[str] = ""  # the report's ``kind`` key: "scan", "inputs", "mitigate"

    model: dict[str, Any]
    data: dict[str, Any]
    parameters: dict[str, Any]
    timings: dict[str, Any]
    versions: dict[str, Any] = field(default_factory=versions)
    created: str = field(default_factory=_now)

    def envelope(self) -> dict[str, Any]:
        """The report's first keys: ``schema``, ``kind``, ``created`` and the envelope fields."""
        return {"schema": REPORT_SCHEMA, "kind": self.kind, "created": self.created, "model": self.model,
                "data": self.data, "parameters": self.parameters, "versions": self.versions,
                "timings": self.timings}


# ------------------------------------------------------------------------------- sanity gate

#: Common input conventions of image classifiers, as the ``--normalize MEAN/STD`` that maps the
#: [0, 1] images trojanscope reads to what the network expects (``x_net = (x - mean) / std``).
CONVENTIONS: dict[str, tuple[list[float] | None, list[float] | None]] = {
    "[0, 1]": ([0.0], [1.0]),
    "[-1, 1]": ([0.5], [0.5]),
    "0-255": ([0.0], [1.0 / 255.0]),
    "ImageNet mean/std": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "dataset mean/std": (None, None),  # measured on the scan images
}


@dataclass
class SanityCheck:
    """Does the model classify the scan images? The gate before any detector.

    Attributes:
        passed: accuracy is neither near chance, nor far below the recorded accuracy, nor far
            below what the network reaches under another common input convention.
        accuracy: accuracy of the model, as loaded, on the scan images.
        n_images: how many images it was measured on.
        chance: 1 / number of classes.
        min_accuracy: the accuracy needed to pass (see :func:`sanity_check`).
        recorded_accuracy: the accuracy the model's sidecar records, if any.
        conventions: ``{"name", "accuracy", "normalize", "bgr"}`` for every input convention
            tried on the bare network, best first.
        fits: the name of the convention that passes the gate, or None.
        reason: one sentence; ``hint``: what to do (or None).
    """

    passed: bool
    accuracy: float
    n_images: int
    chance: float
    min_accuracy: float
    recorded_accuracy: float | None = None
    conventions: list[dict[str, Any]] = field(default_factory=list)
    fits: str | None = None
    reason: str = ""
    hint: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return _json({k: getattr(self, k) for k in self.__dataclass_fields__})


def _fmt_floats(v: Sequence[float]) -> str:
    return ",".join(f"{float(a):.4g}" for a in v)


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def sanity_check(model: nn.Module, clean: CleanData, *, recorded_accuracy: float | None = None,
                 chance_margin: float = 0.25, max_drop: float = 0.15) -> SanityCheck:
    """Measure the model's accuracy on the scan images; on failure, find the input convention that fits.

    The gate fails when ``accuracy < chance + chance_margin * (1 - chance)`` (near chance: 32.5%
    for 10 classes) or, when the sidecar records an accuracy ``r``, when ``accuracy < r -
    max(max_drop, 3 * sqrt(r (1 - r) / n))`` (far below it, beyond three binomial standard
    errors). On failure, the network under the loader's normalisation is run on the images in
    each convention of :data:`CONVENTIONS` (and, for 3 channels, in BGR order); the best one
    that passes is named, with the ``--normalize`` value that selects it.

    Args:
        model: the classifier as it will be scanned (taking [0, 1] images).
        clean: the scan images.
        recorded_accuracy: the accuracy recorded with the model (sidecar ``metrics.cta``).
        chance_margin, max_drop: see above.
    """
    t0 = time.perf_counter()
    prep = prepared(model, clean, method="the sanity check")
    x, y, k = prep.data.x, prep.data.y, prep.num_classes
    with frozen(model):
        acc = _accuracy(prep.model, x, y)
    chance = 1.0 / k
    need = chance + chance_margin * (1 - chance)
    why_low = f"near chance ({chance:.0%} for {k} classes)"
    if recorded_accuracy is not None and 0 < recorded_accuracy <= 1:
        r = float(recorded_accuracy)
        floor = r - max(max_drop, 3 * math.sqrt(max(r * (1 - r), 1e-12) / len(x)))
        if floor > need:
            need, why_low = floor, f"far below the {r:.1%} recorded with the model"
    res = SanityCheck(passed=acc >= need, accuracy=acc, n_images=len(x), chance=chance,
                      min_accuracy=need, recorded_accuracy=recorded_accuracy)
    trials = _try_conventions(model, x, y)
    res.conventions = trials
    best = trials[0] if trials else None
    # a model fed the wrong convention may still beat chance (digits scaled to [0.5, 1]: 65%
    # against 97.5%): it fails too when another convention is clearly better, beyond three
    # standard errors of the difference and at least max_drop
    b_acc = acc if best is None else float(best["accuracy"])
    se = math.sqrt(max(acc * (1 - acc) + b_acc * (1 - b_acc), 1e-12) / len(x))
    misfed = b_acc - acc >= max(max_drop, 3 * se)
    if res.passed and not misfed:
        res.reason = f"the model classifies {acc:.1%} of the {len(x)} scan images correctly"
        res.seconds = time.perf_counter() - t0
        return res
    res.passed = False
    if misfed and acc >= need:
        why_low = f"far below the {b_acc:.1%} it reaches under another input convention"
        need = res.min_accuracy = b_acc - max(max_drop, 3 * se)
    res.reason = (f"the model classifies only {acc:.1%} of the {len(x)} scan images correctly, "
                  f"{why_low}: a scan of a model that does not classify the data cannot be trusted")
    if best is not None and best["accuracy"] >= need and best["accuracy"] > acc:
        res.fits = best["name"]
        fix = f"rescan with --normalize {best['normalize']}"
        if best["bgr"]:
            fix = (f"the network expects BGR channel order, which --normalize cannot express: "
                   f"re-export it taking RGB input (then --normalize {best['normalize']})")
        res.hint = (f"the network reaches {best['accuracy']:.1%} when its input is scaled as "
                    f"{best['name']}: {fix}")
    else:
        res.hint = ("no common input convention fits (best: "
                    + (f"{best['name']} at {best['accuracy']:.1%}" if best else "none ran")
                    + "): check --data (the dataset the model was trained on), --normalize, "
                      "and that the labels mean the same classes")
    res.seconds = time.perf_counter() - t0
    return res


def _try_conventions(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """Accuracy of the bare network under each input convention, best first.

    The loader's normalisation is removed; every convention of :data:`CONVENTIONS` is tried, and
    for 3 channels also in BGR order.
    """
    net = model
    if getattr(model, "normalize", None) is not None and hasattr(model, "inner"):
        net = model.inner  # type: ignore[assignment]
    c = x.shape[1]
    trials: list[dict[str, Any]] = []
    flat = x.transpose(0, 1).flatten(1)
    data_mean, data_std = flat.mean(1).tolist(), flat.std(1).clamp_min(1e-6).tolist()
    with frozen(net):
        for name, (mean, std) in CONVENTIONS.items():
            if name == "dataset mean/std":
                mean, std = data_mean, data_std
            assert mean is not None and std is not None
            if len(mean) not in (1, c):
                continue
            m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            for bgr in ((False, True) if c == 3 else (False,)):
                xi = x.flip(1) if bgr else x
                try:
                    a = _accuracy(net, (xi - m) / s, y)
                except (RuntimeError, ValueError):  # a network that refuses such values
                    continue
                trials.append({"name": name + (", BGR channel order" if bgr else ""), "accuracy": a,
                               "normalize": f"{_fmt_floats(mean)}/{_fmt_floats(std)}", "bgr": bgr})
    in_order = list(trials)  # CONVENTIONS order: simplest first
    trials.sort(key=lambda t: -t["accuracy"])
    if trials:  # near-ties (within a standard error of the best) go to the simplest convention
        top = trials[0]["accuracy"]
        tol = math.sqrt(max(top * (1 - top), 1e-12) / len(x))
        first = next(t for t in in_order if t["accuracy"] >= top - tol)
        trials.remove(first)
        trials.insert(0, first)
    return trials


# ---------------------------------------------------------------------------------- methods

@dataclass
class MethodRun:
    """One method of a scan.

    Attributes:
        method: registry name.
        status: ``"ok"``, ``"failed"`` (it raised; ``error`` says why) or ``"skipped"`` (the
            automatic selection left it out; ``why`` says why).
        result: its ScanResult (status ok).
        p_value: its calibrated p-value (None when it has none).
        calibration: how that p-value is obtained.
        candidate_target: the class it points at (its target, or its candidate when it does not
            flag the model).
        why: one plain sentence.
        error: the error message (status failed).
    """

    method: str
    status: str
    result: ScanResult | None = None
    p_value: float | None = None
    calibration: str | None = None
    candidate_target: int | None = None
    why: str = ""
    error: str | None = None

    @property
    def seconds(self) -> float:
        """Seconds the method ran (0 when it did not)."""
        return self.result.seconds if self.result is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the method's outcome."""
        return _json({"method": self.method, "status": self.status, "p_value": self.p_value,
                      "calibration": self.calibration, "candidate_target": self.candidate_target,
                      "why": self.why, "error": self.error,
                      "result": None if self.result is None else self.result.to_dict()})


def candidate_target(r: ScanResult) -> int | None:
    """The class a result points at: its target, else the candidate it tested."""
    if r.target is not None:
        return int(r.target)
    for key in ("candidate_target", "most_distant_class"):
        v = r.extra.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _why(r: ScanResult) -> str:
    t = candidate_target(r)
    verdict = "flags the model" if r.backdoored else "does not flag the model"
    parts = [f"{r.method} {verdict}"]
    if r.target is not None:
        parts.append(f"target class {r.target}" + (f" from classes {', '.join(map(str, r.sources))}"
                                                   if r.sources else ""))
    elif t is not None:
        parts.append(f"its most suspicious class is {t}")
    stat = f"statistic {r.statistic:.3g}" if math.isfinite(r.statistic) else "no statistic"
    if r.threshold is not None:
        stat += f" (threshold {r.threshold:.3g})"
    parts.append(stat)
    if r.p_value is not None:
        parts.append(f"p = {r.p_value:.2g}")
    return ": ".join(parts[:1]) + (", " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def select_methods(methods: str | Sequence[str], context: Mapping[str, Any]
                   ) -> tuple[list[str], list[dict[str, str]]]:
    """Which model detectors run: ``"auto"`` or names.

    ``"auto"``: every registered detector whose class attributes allow it on ``context``:
    not ``experimental``; ``needs_gradients`` only when the model gives gradients;
    ``needs_data`` only when there are clean images; every resource in ``needs`` given; and its
    ``unavailable(context)`` hook returns None. Registry-driven: a new detector joins the
    automatic selection the day it is registered.

    Returns:
        (selected names, [{"method", "why"}] of those left out).
    """
    from ._registry import available, get

    known = available("model_detector")
    if isinstance(methods, str) and methods.strip() != "auto":
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, str):
        names = list(methods)
        bad = [m for m in names if m not in known]
        if bad or not names:
            raise InputError(f"unknown method {', '.join(bad) or '(none)'}; available: auto, "
                             f"{', '.join(known)}")
        if len(set(names)) != len(names):
            raise InputError(f"each method may be named once, got {', '.join(names)}")
        return names, []
    selected, skipped = [], []
    for name in known:
        cls = get("model_detector", name)
        why = None
        if getattr(cls, "experimental", None):
            why = f"experimental, runs only when named (--method {name})"
        elif getattr(cls, "needs_gradients", True) and not context.get("gradients", True):
            why = "needs gradients; this model is forward-only"
        elif getattr(cls, "needs_data", True) and not context.get("data", True):
            why = "needs clean images"
        else:
            missing = [n for n in getattr(cls, "needs", ()) if context.get(n) is None]
            if missing:
                flags = {"reference": "--reference MODEL", "ulp": "--ulp FILE"}
                why = "needs " + " and ".join(flags.get(m, m) for m in missing)
            else:
                hook = getattr(cls, "unavailable", None)
                why = hook(dict(context)) if callable(hook) else None
        if why is None:
            selected.append(name)
        else:
            skipped.append({"method": name, "why": why})
    return selected, skipped


def build_detectors(names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None, *,
                    seed: int | None = 0, resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Instantiate the named model detectors.

    ``params[name]`` first, ``seed`` for those that take one (unless set), and the resources of
    their ``needs``. Bad or unknown parameters are a clear error naming the method and its
    parameters, before any work starts.
    """
    from ._registry import check_params, get

    out = {}
    for name in names:
        cls = get("model_detector", name)
        p = dict((params or {}).get(name, {}))
        sig = inspect.signature(cls)
        if seed is not None and "seed" in sig.parameters:
            p.setdefault("seed", seed)
        for res, value in (resources or {}).items():
            key = RESOURCE_PARAMS.get(res, res)
            if value is not None and key in sig.parameters:
                p.setdefault(key, value)
        check_params("model_detector", name, p)
        try:
            out[name] = cls(**p)
        except TypeError as e:
            raise InputError(f"bad parameter for {name}: {e}") from None
    return out


# ------------------------------------------------------------------------------ scan_model

@dataclass
class ScanReport(Envelope):
    """Everything a scan found, with its envelope. ``to_dict()`` is the JSON report.

    Attributes:
        verdict: the combined verdict (:class:`~trojanscope.combine.CombinedVerdict`).
        sanity: the sanity gate (None when it was not run: no clean images, or turned off).
        methods: one :class:`MethodRun` per method considered (ran, failed or skipped).
        model, data, parameters, versions, timings, created: the envelope (:class:`Envelope`).
    """

    kind: ClassVar[str] = "scan"

    verdict: CombinedVerdict
    sanity: SanityCheck | None
    methods: list[MethodRun]

    @property
    def exit_code(self) -> int:
        """0 clean, 1 backdoored, 3 inconclusive."""
        return self.verdict.exit_code

    @property
    def results(self) -> list[ScanResult]:
        """The ScanResults of the methods that ran."""
        return [m.result for m in self.methods if m.result is not None]

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` document of a scan."""
        return _json({**self.envelope(), "verdict": self.verdict.to_dict(),
                      "sanity": None if self.sanity is None else self.sanity.to_dict(),
                      "methods": [m.to_dict() for m in self.methods]})


#: What a data-free scan report says about the sanity gate.
NO_DATA_SANITY = ("not run: no clean data was given, so the model's accuracy on its task could not "
                  "be measured (the data-free methods judge the model alone)")


def _data_free_shape(model: nn.Module, in_shape: Sequence[int] | None, num_classes: int | None
                     ) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and the class count of a model scanned without data.

    A clear error when the input shape is unknown or the model cannot take random images of it.
    """
    shape = in_shape if in_shape is not None else getattr(model, "in_shape", None)
    if shape is None:
        raise InputError("a scan without data needs the model's input shape: give --in-shape C,H,W "
                         "(or in_shape=...), or a model file whose sidecar records in_shape")
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"in_shape must be three integers C,H,W, got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 1 or max(shape) > 4096:
        raise InputError(f"in_shape must be three positive integers C,H,W, got {shape}")
    probe = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0)).to(model_device(model))
    with frozen(model):
        k = probe_num_classes(model, probe)
    if num_classes is not None and k != num_classes:
        raise InputError(f"the model returns {k} classes, not the {num_classes} given")
    return shape, k


def scan_model(model: nn.Module, clean: CleanData | None, methods: str | Sequence[str] = "auto", *,
               params: Mapping[str, Mapping[str, Any]] | None = None,
               reference: nn.Module | None = None, ulp: str | Path | None = None,
               alpha: float = 0.05, rule: str = "cauchy", seed: int = 0, sanity: bool = True,
               recorded_accuracy: float | None = None, model_path: str | Path | None = None,
               data_info: Mapping[str, Any] | None = None,
               progress: ProgressFn | None = None, in_shape: Sequence[int] | None = None,
               num_classes: int | None = None, keep_going: bool | None = None,
               layout: str = "auto") -> ScanReport:
    """Is ``model`` backdoored? Sanity gate, detectors, one combined verdict.

    Args:
        model: the classifier (taking [0, 1] NCHW images; logits or probabilities). Never
            modified.
        clean: a few clean labelled images (ImageData or (x, y)); None for data-free methods
            only (the sanity gate is then not run).
        methods: ``"auto"`` (every applicable detector, :func:`select_methods`), a
            comma-separated string or a list of registry names.
        params: ``{method: {param: value}}`` overrides of the detectors' defaults.
        reference: a clean model of the same task (enables ``bias_maps`` in auto mode).
        ulp: a trained ULP file (enables ``ulp`` in auto mode when its input shape fits).
        alpha: significance level of the combined test.
        rule: ``"cauchy"`` (Liu & Xie 2020) or ``"holm"``; see :mod:`trojanscope.combine`.
        seed: passed to every detector that takes one (unless ``params`` sets it).
        sanity: run the sanity gate (on by default; turning it off is for experts).
        recorded_accuracy: the accuracy the model should reach; default: its sidecar's.
        model_path: recorded in the report.
        data_info: extra entries of the report's ``data`` (dataset name, split, ...).
        progress: optional callback; receives dicts with ``"stage"`` (``"sanity"``, ``"method"``,
            ``"done"``) and, while a method runs, its own progress dicts with ``"method"`` added.
        in_shape: (C, H, W) for a scan without data (default: the model's ``in_shape``).
        num_classes: without data, the class count the model must return (default: probed
            from its output).
        keep_going: when a method fails, record it (status ``"failed"``, which makes a
            "clean" verdict inconclusive) and run the others, instead of raising. Default: only
            in auto mode (an explicitly named method that fails is an error); the demo sets it.
        layout: memory layout of the model's weights during the scan: ``"auto"``
            (channels-last on a CPU for a convolutional model, 1.4-1.8x faster at the same
            verdicts), ``"channels_last"`` or ``"contiguous"``; the model is restored after
            (:class:`~trojanscope._runtime.memory_layout`).

    Raises:
        InputError: unknown methods or parameters, a model that cannot take the images, or an
            explicitly named method that fails (in auto mode a failing method is recorded and
            makes a "clean" verdict inconclusive instead; see ``keep_going``).
    """
    t_start = time.perf_counter()
    check_model(model)
    auto = isinstance(methods, str) and methods.strip() == "auto"
    if keep_going is None:
        keep_going = auto
    mdesc = describe_model(model, model_path)
    if recorded_accuracy is None:
        recorded_accuracy = mdesc["sidecar"]["accuracy"]
    data = None if clean is None else as_image_data(clean)
    k = None
    shape = None
    if data is not None:
        k = prepared(model, data).num_classes
    else:  # data-free: the input shape is given or recorded, the class count is probed
        shape, k = _data_free_shape(model, in_shape, num_classes)
    ctx: dict[str, Any] = {
        "gradients": not bool(getattr(model, "forward_only", False)), "data": data is not None,
        "reference": reference, "ulp": None if ulp is None else str(ulp),
        "in_shape": tuple(data.in_shape) if data is not None else shape,
        "num_classes": k if k is not None else getattr(model, "num_classes", None),
    }
    names, skipped = select_methods(methods, ctx)
    if not auto:
        if ulp is not None and "ulp" not in names:
            raise InputError("--ulp is for the ulp method; add it to --method (or use auto)")
        if reference is not None and "bias_maps" not in names:
            raise InputError("--reference is for the bias_maps method; add it to --method (or use auto)")
    known = set(names) | {s["method"] for s in skipped}
    from ._registry import available

    for m in (params or {}):
        if m not in available("model_detector"):
            raise InputError(f"settings for unknown method {m!r}; available: "
                             f"{', '.join(available('model_detector'))}")
        if not auto and m not in known:
            raise InputError(f"settings for {m}, which is not in --method ({', '.join(names)})")
    detectors = build_detectors(names, params, seed=seed,
                                resources={"reference": reference, "ulp": ctx["ulp"]})
    parameters = {"methods": "auto" if auto else list(names), "selected": list(names),
                  "alpha": alpha, "rule": rule, "seed": seed, "sanity_gate": sanity,
                  "device": str(model_device(model)), "layout": resolve_layout(model, layout),
                  "method_params": {n: d.get_params() for n, d in detectors.items()},
                  "unused_settings": sorted(set(params or {}) - set(names))}
    timings: dict[str, Any] = {"sanity": 0.0, "methods": {}, "total": 0.0}
    dinfo = describe_data(data, **dict(data_info or {}))
    if shape is not None:  # data-free
        dinfo.update(in_shape=list(shape), num_classes=k, sanity_gate=NO_DATA_SANITY)
    runs: list[MethodRun] = [MethodRun(s["method"], "skipped", why=s["why"]) for s in skipped]
    if not keep_going:  # a bad value fails before any method runs (keep_going records it per method)
        for det in detectors.values():
            det.validate_params()

    # both restored on exit: the models leave the scan as they came (bias maps run the reference too)
    with memory_layout(model, layout), memory_layout(reference, layout) if reference is not None else nullcontext():
        gate = None
        if sanity and data is not None:
            _emit(progress, stage="sanity", n_images=len(data))
            gate = sanity_check(model, data, recorded_accuracy=recorded_accuracy)
            timings["sanity"] = gate.seconds
            if not gate.passed:
                verdict = CombinedVerdict("inconclusive", None, rule, alpha, reason=gate.reason, hint=gate.hint)
                runs += [MethodRun(n, "skipped", why="not run: the model failed the sanity gate")
                         for n in names]
                timings["total"] = time.perf_counter() - t_start
                _emit(progress, stage="done", verdict=verdict.verdict)
                return ScanReport(verdict, gate, runs, model=mdesc, data=dinfo, parameters=parameters,
                                  timings=timings)

        failed: list[str] = []
        for i, (name, det) in enumerate(detectors.items()):
            _emit(progress, stage="method", method=name, index=i + 1, total=len(detectors))

            def inner(p: dict[str, Any], name: str = name) -> None:
                _emit(progress, **{**p, "method": name})

            try:
                r = det.scan(model, data, progress=inner if progress else None, in_shape=shape)
            except TrojanscopeError as e:
                if not keep_going:
                    raise InputError(str(e) if str(e).startswith(f"{name}: ") else f"{name}: {e}") from None
                failed.append(name)
                runs.append(MethodRun(name, "failed", error=str(e), why=f"{name} could not run: {e}"))
                continue
            timings["methods"][name] = r.seconds
            calib = r.extra.get("p_value_calibration")
            runs.append(MethodRun(name, "ok", result=r, p_value=r.p_value,
                                  calibration=calib if isinstance(calib, str) else (
                                      None if r.p_value is None else "the method's own test"),
                                  candidate_target=candidate_target(r), why=_why(r)))
            _emit(progress, stage="method_done", method=name, backdoored=r.backdoored, target=r.target,
                  statistic=r.statistic, p_value=r.p_value, seconds=r.seconds)
        evidence = [Evidence(m.method, m.p_value, m.candidate_target,
                             list(m.result.sources) if m.result else [], bool(m.result and m.result.backdoored))
                    for m in runs if m.status == "ok"]
        verdict = combine_evidence(evidence, alpha=alpha, rule=rule, failed=failed)
        timings["total"] = time.perf_counter() - t_start
        _emit(progress, stage="done", verdict=verdict.verdict)
        return ScanReport(verdict, gate, runs, model=mdesc, data=dinfo, parameters=parameters, timings=timings)


# ---------------------------------------------------------------------------- guard_inputs

@dataclass
class GuardReport(Envelope):
    """Which suspect inputs the input detectors flag, with the envelope.

    Attributes:
        flagged: bool [N], flagged by at least one detector.
        labels: the model's predictions [N].
        results: one :class:`~trojanscope.types.InputScores` per detector.
        fpr: the target false-positive rate of the guard as a whole; ``split_fpr``: whether it
            was split over the detectors (Bonferroni).
        inputs: names of the inputs (file names), when known.
        model, data, parameters, versions, timings, created: the envelope (:class:`Envelope`).
    """

    kind: ClassVar[str] = "inputs"

    flagged: torch.Tensor
    labels: torch.Tensor
    results: list[InputScores]
    fpr: float
    split_fpr: bool
    inputs: list[str] | None = None

    @property
    def exit_code(self) -> int:
        """1 when some input is flagged, else 0."""
        return 1 if bool(self.flagged.any()) else 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of a guard run (``report/schemas/inputs-report.schema.json``).

        Every score is written (in the order of the inputs), with each detector's threshold,
        false-positive rate and fit time.
        """
        n = int(self.flagged.numel())
        per_fpr, fit = self.parameters.get("per_method_fpr", {}), self.timings.get("fit", {})
        results = [{"method": r.method, "threshold": r.threshold, "fpr": per_fpr.get(r.method),
                    "scores": r.scores, "flags": r.flags, "seconds": r.seconds,
                    "fit_seconds": fit.get(r.method), "params": r.params} for r in self.results]
        return _json({**self.envelope(), "verdict": {"flagged": int(self.flagged.sum()), "n_inputs": n,
                                         "exit_code": self.exit_code},
                      "fpr": self.fpr, "split_fpr": self.split_fpr, "inputs": self.inputs,
                      "labels": self.labels, "flagged": self.flagged, "results": results})


def guard_inputs(model: nn.Module, clean: CleanData, suspect: torch.Tensor,
                 methods: str | Sequence[str] = "mutation,activation_space,kde,lid", *,
                 params: Mapping[str, Mapping[str, Any]] | None = None, fpr: float = 0.05,
                 split_fpr: bool = True, seed: int = 0, inputs: list[str] | None = None,
                 model_path: str | Path | None = None, data_info: Mapping[str, Any] | None = None,
                 progress: ProgressFn | None = None) -> GuardReport:
    """Fit input detectors on clean images and flag the suspect inputs (:class:`~trojanscope.guard.Guard`).

    Args:
        model: the classifier to guard (never modified).
        clean: clean labelled reference images (ideally not the model's training images).
        suspect: the inputs to check, [N, C, H, W] in [0, 1].
        methods: input detector names (comma-separated or a list).
        params: ``{method: {param: value}}``.
        fpr, split_fpr: the guard's target false-positive rate, split over the detectors.
        seed: seed of every detector.
        inputs: names of the suspect inputs (recorded).
        model_path, data_info: the model file and the data description, recorded in the report.
        progress: optional callback (``{"stage": "fit"|"score", "method": name}``).
    """
    from ._registry import names as registry_names
    from .guard import Guard

    t0 = time.perf_counter()
    names = registry_names("input_detector", methods)
    for m in params or {}:
        if m not in names:
            raise InputError(f"settings for {m}, which is not in --method ({', '.join(names)})")
    spec = {m: dict((params or {}).get(m, {})) for m in names}
    data = as_image_data(clean)
    guard = Guard(model, spec, fpr=fpr, split_fpr=split_fpr, seed=seed)

    def relay(stage: str) -> Any:
        return (lambda p: _emit(progress, stage=stage, method=p.get("detector"))) if progress else None

    guard.fit(data, progress=relay("fit"))
    t_fit = time.perf_counter() - t0
    res = guard.predict(suspect, progress=relay("score"))
    results = [InputScores(m, res.scores[m], res.flags[m], res.thresholds[m], res.labels,
                           res.seconds[m], guard.detectors_[m].get_params()) for m in names]
    timings = {"fit": guard.fit_seconds_, "score": res.seconds, "fit_total": t_fit,
               "total": time.perf_counter() - t0}
    parameters = {"methods": names, "fpr": fpr, "split_fpr": split_fpr, "seed": seed,
                  "per_method_fpr": res.fpr, "device": str(model_device(model)),
                  "method_params": {m: guard.detectors_[m].get_params() for m in names}}
    _emit(progress, stage="done", flagged=int(res.flagged.sum()))
    return GuardReport(res.flagged, res.labels, results, fpr, split_fpr, inputs=inputs,
                       model=describe_model(model, model_path),
                       data=describe_data(data, **dict(data_info or {})), parameters=parameters,
                       timings=timings)


# ---------------------------------------------------------------------------- repair_model

@dataclass
class RepairReport(Envelope):
    """A repaired model and what the repair cost and achieved, with the envelope.

    Attributes:
        result: the :class:`~trojanscope.types.MitigationResult` (``result.model`` is the
            repaired model; the input model is never modified).
        model, data, parameters, versions, timings, created: the envelope (:class:`Envelope`).
    """

    kind: ClassVar[str] = "mitigate"

    result: MitigationResult

    @property
    def exit_code(self) -> int:
        """The repair's verdict (docs/repair.md): 0 repaired, 1 backdoor still works, 3 refused."""
        return {"repaired": 0, "ineffective": 1}.get(getattr(self.result, "verdict", "repaired"), 3)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of a repair (``report/schemas/repair-report.schema.json``)."""
        return _json({**self.envelope(), "result": self.result.to_dict()})


def build_mitigation(method: str, params: Mapping[str, Any] | None = None) -> Mitigation:
    """Instantiate the registered mitigation ``method`` with ``params``.

    Args:
        method: mitigation registry name.
        params: its parameters.

    Raises:
        InputError: an unknown mitigation or parameter (naming the mitigation's parameters),
            or a value outside its ``parameter_constraints``, before any work starts.
    """
    from ._registry import check_params, get

    cls = get("mitigation", method)
    check_params("mitigation", method, params or {})
    try:
        mit: Mitigation = cls(**dict(params or {}))
    except TypeError as e:
        raise InputError(f"bad parameter for {method}: {e}") from None
    mit.validate_params()  # values too (and the scan's), before anything is loaded
    return mit


def repair_model(model: nn.Module, clean: CleanData, method: str | Mitigation = "unlearn", *,
                 params: Mapping[str, Any] | None = None, scan: ScanResult | None = None,
                 test: ImageData | None = None, true_trigger: Any = None,
                 model_path: str | Path | None = None, data_info: Mapping[str, Any] | None = None,
                 progress: ProgressFn | None = None) -> RepairReport:
    """Repair ``model`` with a registered mitigation (thin: the mitigation owns the behaviour).

    Args:
        model: the (suspected) backdoored model; never modified.
        clean: clean labelled images the defender has.
        method: mitigation registry name, or a configured
            :class:`~trojanscope.mitigations.Mitigation` (the CLI builds it first, to check its
            settings before loading anything).
        params: its parameters (with a name only).
        scan, test, true_trigger: passed to :meth:`~trojanscope.mitigations.Mitigation.apply`.
        model_path, data_info: the model file and the data description, recorded in the report.
        progress: optional callback.
    """
    t0 = time.perf_counter()
    if isinstance(method, str):
        mit = build_mitigation(method, params)
    else:
        if params:
            raise InputError("repair_model: give params with a method name, not with a configured mitigation")
        mit, method = method, method.name
    data = as_image_data(clean)
    _emit(progress, stage="repair", method=method)
    res = mit.apply(model, data, scan, test=test, true_trigger=true_trigger, progress=progress)
    _emit(progress, stage="done")
    return RepairReport(res, model=describe_model(model, model_path),
                        data=describe_data(data, **dict(data_info or {})),
                        parameters={"method": method, "method_params": mit.get_params(),
                                    "device": str(model_device(model))},
                        timings={"total": time.perf_counter() - t0, "repair": res.seconds})


__all__ = ["CONVENTIONS", "REPORT_SCHEMA", "Envelope", "GuardReport", "MethodRun", "RepairReport",
           "SanityCheck", "ScanReport", "build_detectors", "build_mitigation",
           "candidate_target", "describe_data", "describe_model", "guard_inputs",
           "repair_model", "sanity_check", "scan_model", "select_methods"]
