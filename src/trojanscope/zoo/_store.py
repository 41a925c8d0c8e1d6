"""On-disk layout of a zoo: ``spec.json``, ``manifest.json`` and ``models/<name>.safetensors``.

A model is the usual ``.safetensors`` + ``.json`` sidecar pair (``trojanscope.models.save_model``,
so ``trojanscope scan`` loads it), each written to a temporary name and renamed; the sidecar is
written last and carries the model's manifest row, so it marks the model as complete. ``manifest.json`` is an index rebuilt
from the model files and rewritten atomically, so a build killed at any point resumes from the
files on disk and never sees a half-written model.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelFileError
from ..utils import atomic_write_json
from ._spec import ZooSpec

META_KEY = "zoo"
SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"


def model_path(zoo_dir: Path, name: str) -> Path:
    return Path(zoo_dir) / "models" / f"{name}.safetensors"


def save_zoo_model(zoo_dir: Path, name: str, model: nn.Module, row: dict[str, Any]) -> Path:
    """Write ``model`` with :func:`trojanscope.models.save_model` (safetensors + JSON sidecar, each
    renamed into place); the sidecar, written last, carries the row and marks the model done."""
    from ..models import save_model

    path = model_path(zoo_dir, name)
    path.with_suffix(".json").unlink(missing_ok=True)
    metrics = {"cta": row["cta"], "asr": row["asr"]}
    save_model(model, path, metadata={"zoo": row, "dataset": row["dataset"], "metrics": metrics})
    return path


def read_row(path: Path) -> dict[str, Any] | None:
    """The manifest row of a model file, or None unless both its weights and sidecar are whole."""
    from safetensors import safe_open

    try:
        row = json.loads(Path(path).with_suffix(".json").read_text())[META_KEY]
        with safe_open(str(path), framework="pt") as f:
            f.keys()
        return row
    except Exception:  # noqa: BLE001 - any damage means "not done"
        return None


def clean_stale(zoo_dir: Path) -> int:
    """Remove temporary files left by a killed build; returns how many."""
    n = 0
    folder = Path(zoo_dir) / "models"
    if folder.is_dir():
        for p in folder.glob(".*"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def completed_rows(zoo_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows of every complete model file, keyed by model name (damaged files are removed)."""
    rows: dict[str, dict[str, Any]] = {}
    folder = Path(zoo_dir) / "models"
    if not folder.is_dir():
        return rows
    for p in sorted(folder.glob("*.safetensors")):
        row = read_row(p)
        if row is None:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
            continue
        rows[row["name"]] = row
    return rows


def write_manifest(zoo_dir: Path, rows: dict[str, dict[str, Any]]) -> None:
    atomic_write_json(Path(zoo_dir) / MANIFEST_FILE,
                      {"models": [rows[k] for k in sorted(rows)]})


def read_spec(zoo_dir: Path) -> ZooSpec | None:
    p = Path(zoo_dir) / SPEC_FILE
    if not p.is_file():
        return None
    try:
        return ZooSpec.from_dict(json.loads(p.read_text()))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{p} is not a valid zoo spec: {e}") from None


@dataclass
class Zoo:
    """A built zoo: its spec and manifest rows; models load lazily.

    Attributes:
        root: the zoo folder.
        spec: the parameters it was built with.
        rows: manifest rows (name, split, poisoned, arch, trigger_id, source, target,
            poison_ratio, cta, asr, status, seed, ...).
    """

    root: Path
    spec: ZooSpec
    rows: list[dict[str, Any]] = field(default_factory=list)

    def select(self, split: str | None = None, ok_only: bool = True) -> list[dict[str, Any]]:
        """Rows of one split ("train"/"test"/None = both); only models that passed the bars."""
        return [r for r in self.rows if (split is None or r["split"] == split)
                and (not ok_only or r["status"] == "ok")]

    def load_model(self, row: dict[str, Any]) -> nn.Module:
        return load_zoo_model(model_path(self.root, row["name"]), row)

    def load(self, split: str | None = None, ok_only: bool = True
             ) -> tuple[list[nn.Module], torch.Tensor, list[dict[str, Any]]]:
        """(models, labels [N] with 1 = poisoned, rows) of a split."""
        rows = self.select(split, ok_only)
        models = [self.load_model(r) for r in rows]
        return models, torch.tensor([int(r["poisoned"]) for r in rows]), rows


def load_zoo_model(path: Path, row: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild a zoo model from its file (weights only, never unpickles)."""
    from safetensors.torch import load_file

    from ..models._files import _build, _load_state
    from ..models._sidecar import validate_sidecar
    from ..models.io import check_finite_weights

    row = row or read_row(Path(path))
    if row is None or not Path(path).is_file():
        raise ModelFileError(f"{path} is missing or not a zoo model file")
    # a zoo folder may come from someone else: the row is validated like a sidecar, the network
    # is built on the meta device until the weights fit it, and NaN/Inf weights are refused
    side = validate_sidecar({k: row.get(k) for k in ("arch", "num_classes", "in_shape")},
                            Path(path).with_suffix(".json").name)
    p = Path(path)
    try:
        state = load_file(str(p))
    except Exception as e:
        raise ModelFileError(f"{p.name} is not a readable safetensors file: {type(e).__name__}: {e}") from e
    model = _build(p, None, side["arch"], side["num_classes"], side["in_shape"], None)
    _load_state(model, state, p, side)
    check_finite_weights(model, p.name)
    return model.eval()


def load_zoo(zoo_dir: str | Path) -> Zoo:
    """Open a zoo folder written by :func:`~trojanscope.zoo.build_zoo`."""
    root = Path(zoo_dir)
    spec = read_spec(root)
    if spec is None:
        raise InputError(f"{root} is not a zoo folder (no {SPEC_FILE}); build one with "
                         "`trojanscope zoo build`")
    rows = completed_rows(root)
    return Zoo(root, spec, [rows[k] for k in sorted(rows)])
