"""What a zoo is made of: the build parameters and the deterministic plan of model jobs.

Follows the population design of Kolouri et al., "Universal Litmus Patterns" (CVPR 2020), sec. 4:
20 distinct 5x5 triggers (binary and colour) split into disjoint train/test sets, stamped at a
random corner of the image; each poisoned model learns one random source -> target pair; the
models are split 50/50 into train and test so that the test models carry only unseen triggers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..attacks import PatchTrigger
from ..errors import InputError

SPLITS = ("train", "test")


@dataclass(frozen=True, kw_only=True)
class ZooSpec:
    """Parameters of a zoo build (stored as ``spec.json``; a resumed build must match it).

    Attributes:
        dataset: registered dataset name (``digits``, ``mnist``, ...).
        data_root: folder of the dataset files (None = ``$TROJANSCOPE_DATA``; digits needs none).
        size: image side for datasets that resize (digits); None = the dataset's own.
        archs: architecture names; each model draws one at random (the family is randomised
            when more than one is given).
        n_clean, n_poisoned: number of clean / poisoned models.
        poison_ratio: poisoned images as a fraction of the clean images of the source class(es)
            ("the ratio of the number of poisoned to clean images", ULP sec. 4.1; 0.5 by default,
            0.25/0.12/0.05/0.01 in the sensitivity study, Fig. 4). Poisoned copies are appended.
        sources: "one" (a random single source class, as in the paper) or "all" (every class
            except the target).
        n_triggers: number of distinct triggers; even ids are the train set, odd ids the test set;
            the first half are "binary" patterns, the second half "color" (ULP Fig. 2).
        trigger_size: side of the square trigger in pixels (5 in the paper).
        train_subset: train every model on this many random training images (None = all).
        eval_subset: measure CTA and ASR on this many random test images (None = all).
        epochs, batch_size, lr: training of every model (SGD with momentum).
        min_cta: models below this clean test accuracy are marked ``failed_accuracy``.
        min_asr: poisoned models below this attack success rate are marked ``failed_attack``
            (the paper keeps only models with ASR > 90%).
        seed: every random choice of the plan and of each model derives from it.
    """

    dataset: str = "mnist"
    data_root: str | None = None
    size: int | None = None
    archs: tuple[str, ...] = ("small_cnn",)
    n_clean: int = 100
    n_poisoned: int = 100
    poison_ratio: float = 0.5
    sources: str = "one"
    n_triggers: int = 20
    trigger_size: int = 5
    train_subset: int | None = None
    eval_subset: int | None = None
    epochs: float = 1.0
    batch_size: int = 64
    lr: float = 0.05
    min_cta: float = 0.8
    min_asr: float = 0.9
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["archs"] = list(self.archs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZooSpec:
        d = dict(d)
        d["archs"] = tuple(d.get("archs", ("small_cnn",)))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def plan_key(self) -> dict[str, Any]:
        """The fields that decide what each model is; counts may grow on resume."""
        d = self.to_dict()
        for k in ("n_clean", "n_poisoned", "data_root", "eval_subset", "min_cta", "min_asr"):
            d.pop(k)
        return d

    def validate(self) -> None:
        if self.n_clean < 0 or self.n_poisoned < 0 or self.n_clean + self.n_poisoned == 0:
            raise InputError("a zoo needs n_clean + n_poisoned > 0 (and neither negative)")
        if not 0 < self.poison_ratio <= 10:
            raise InputError(f"poison_ratio must be in (0, 10], got {self.poison_ratio}")
        if self.sources not in ("one", "all"):
            raise InputError(f"sources must be 'one' or 'all', got {self.sources!r}")
        if self.n_triggers < 2:
            raise InputError("n_triggers must be >= 2 (disjoint train and test trigger sets)")
        if not self.archs:
            raise InputError("give at least one architecture")
        if self.epochs <= 0:
            raise InputError("epochs must be positive")


def trigger_for(trigger_id: int, spec: ZooSpec) -> PatchTrigger:
    """The trigger ``trigger_id``: a 5x5 binary (first half of the ids) or colour pattern whose
    pixels are drawn with ``pattern_seed = trigger_id``, stamped at a random corner."""
    kind = "binary" if trigger_id < spec.n_triggers // 2 else "color"
    return PatchTrigger(size=spec.trigger_size, pattern=kind, location="random_corner",
                        margin=1, pattern_seed=int(trigger_id), seed=int(trigger_id))


def trigger_split(trigger_id: int) -> str:
    """Even trigger ids belong to the train models, odd ids to the test models (disjoint)."""
    return SPLITS[trigger_id % 2]


@dataclass(frozen=True)
class ModelJob:
    """One model of the zoo: everything needed to train it, independent of the other jobs."""

    name: str
    index: int
    poisoned: bool
    split: str
    arch: str
    seed: int
    trigger_id: int | None = None
    source: int | None = None
    target: int | None = None
    sources: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = list(self.sources)
        return d


def plan_jobs(spec: ZooSpec, num_classes: int) -> list[ModelJob]:
    """The deterministic list of jobs. Job ``i`` depends only on (spec.seed, kind, i), so a zoo
    can later be grown by raising the counts without changing the models already built."""
    spec.validate()
    jobs: list[ModelJob] = []
    for poisoned, n in ((False, spec.n_clean), (True, spec.n_poisoned)):
        kind = "poisoned" if poisoned else "clean"
        for i in range(n):
            r = np.random.default_rng([spec.seed, int(poisoned), i])
            split = SPLITS[i % 2]
            arch = spec.archs[int(r.integers(len(spec.archs)))]
            seed = int(r.integers(2**31 - 1))
            if not poisoned:
                jobs.append(ModelJob(f"{kind}_{i:05d}", i, False, split, arch, seed))
                continue
            ids = [t for t in range(spec.n_triggers) if trigger_split(t) == split]
            tid = int(ids[int(r.integers(len(ids)))])
            target = int(r.integers(num_classes))
            if spec.sources == "one":
                source = int((target + 1 + r.integers(num_classes - 1)) % num_classes)
                srcs: tuple[int, ...] = (source,)
            else:
                source = None
                srcs = tuple(c for c in range(num_classes) if c != target)
            jobs.append(ModelJob(f"{kind}_{i:05d}", i, True, split, arch, seed, tid, source,
                                 target, srcs))
    # interleave clean/poisoned and train/test: a build stopped early is still balanced
    return sorted(jobs, key=lambda j: (j.index, j.poisoned))
