"""Shared fixtures: tiny models trained in the test session on the embedded digits data.

``backdoor`` is a small CNN on 16x16 digits with a 3x3 white patch (bottom right) -> class 0 at
10% poison; ``backdoor["clean"]`` is its clean twin trained with the same seed. Both train in a
few seconds; tests must not modify them (copy.deepcopy first where a test trains).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread always: two xdist workers on two cores must not oversubscribe, and a single-process
# run must train the same fixture models bit for bit (thread count changes float reductions).
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def backdoor():
    """dict: clean, backdoored (models), train, test (ImageData), trigger, target."""
    from trojanscope.demo import demo_models

    return demo_models(seed=0)


@pytest.fixture(scope="session")
def clean_few(backdoor):
    """20 clean images per class from the training split (what a detector gets)."""
    return backdoor["train"].clean_subset(20, seed=0)


@pytest.fixture()
def shared_data() -> Path:
    """The real datasets folder, when this machine has it (tests using it are skipped otherwise)."""
    root = Path(os.environ.get("TROJANSCOPE_DATA", SHARED_DATA))
    if not (root / "mnist").is_dir():
        pytest.skip("real data not available")
    return root


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k], v), f"parameter {k} was modified"
