"""Model zoos: many clean and backdoored models of one task, for meta-detectors such as ULP.

``build_zoo(folder, ZooSpec(...))`` trains the models (local processes or Ray), writes each one
atomically with its manifest row, and resumes where a killed build stopped; ``load_zoo(folder)``
opens the result.
"""

from __future__ import annotations

from ._build import EXECUTORS, build_zoo
from ._spec import ModelJob, ZooSpec, plan_jobs, trigger_for, trigger_split
from ._store import Zoo, load_zoo, load_zoo_model

__all__ = ["EXECUTORS", "ModelJob", "Zoo", "ZooSpec", "build_zoo", "load_zoo", "load_zoo_model",
           "plan_jobs", "trigger_for", "trigger_split"]
