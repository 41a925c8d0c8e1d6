"""Registry, validation, data container, trainer and metrics."""

from __future__ import annotations

import pytest
import torch

import trojanscope as ts
from trojanscope._validate import check_images, check_labels
from trojanscope.attacks import PatchTrigger, PoisoningAttack
from trojanscope.data import ImageData, load_dataset
from trojanscope.metrics import (
    accuracy,
    attack_success_rate,
    confusion_matrix,
    roc_auc,
    threshold_at_fpr,
)
from trojanscope.models import create_model
from trojanscope.train import augment_batch, train


def test_registry_unknown_name_lists_choices():
    with pytest.raises(ts.InputError, match="available: .*small_cnn"):
        ts.create("arch", "no_such_net")


@pytest.mark.parametrize("bad, msg", [
    (torch.rand(3, 8, 8), "4-D"),
    (torch.zeros(0, 1, 8, 8), "empty"),
    (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
    (torch.rand(2, 1, 8, 8) * 255, r"\[0, 1\]"),
    (torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8), "float"),
])
def test_bad_images_give_clear_errors(bad, msg):
    with pytest.raises(ts.InputError, match=msg):
        check_images(bad)


def test_bad_labels():
    with pytest.raises(ts.InputError, match="shape"):
        check_labels(torch.zeros(3, dtype=torch.long), 4)
    with pytest.raises(ts.InputError, match="10 classes"):
        check_labels(torch.tensor([0, 10]), 2, 10)


def test_digits_split_and_clean_subset_deterministic():
    tr = load_dataset("digits", "train")
    te = load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and tr.x.shape[1:] == (1, 8, 8)
    assert 0 <= float(tr.x.min()) and float(tr.x.max()) <= 1
    a, b = tr.clean_subset(5, seed=3), tr.clean_subset(5, seed=3)
    assert torch.equal(a.x, b.x) and torch.bincount(a.y).tolist() == [5] * 10
    assert not torch.equal(a.x, tr.clean_subset(5, seed=4).x)
    big = load_dataset("digits", "test", size=16)
    assert big.x.shape[1:] == (1, 16, 16)


def test_imagedata_rejects_out_of_range_labels():
    with pytest.raises(ts.InputError):
        ImageData(torch.rand(2, 1, 4, 4), torch.tensor([0, 5]), 3)


def test_patch_trigger_and_poisoner():
    x = torch.zeros(4, 3, 10, 10)
    t = PatchTrigger(size=3, location="bottom_right", margin=1)
    xt = t.apply(x)
    assert float(x.sum()) == 0  # input untouched
    assert torch.all(xt[:, :, 6:9, 6:9] == 1) and float(xt.sum()) == 4 * 3 * 9
    y = torch.tensor([0, 1, 2, 3])
    xp, yp, idx = PoisoningAttack(trigger=t, target=0, sources=[1, 2], count=2).poison(x, y, 4)
    assert len(xp) == 6 and yp[idx].tolist() == [0, 0] and torch.all(xp[idx][:, :, 6:9, 6:9] == 1)
    xr, yr, idx2 = PoisoningAttack(trigger=t, target=0, sources=[1], count=1,
                                   remove_originals=True).poison(x, y, 4)
    assert len(xr) == 4 and idx2.tolist() == [1] and yr.tolist() == [0, 0, 2, 3]
    with pytest.raises(ts.InputError, match="out of range"):
        PoisoningAttack(trigger=t, target=7, count=1).poison(x, y, 4)


def test_augment_crop_flip_shapes_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8)
    a = augment_batch(x, g, crop=2, flip=True)
    assert a.shape == x.shape
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(1), crop=0, flip=False), x)


def test_backdoored_fixture_has_backdoor(backdoor):
    te, trig, t = backdoor["test"], backdoor["trigger"], backdoor["target"]
    assert accuracy(backdoor["backdoored"], te) > 0.9
    assert accuracy(backdoor["clean"], te) > 0.9
    assert attack_success_rate(backdoor["backdoored"], te, trig, t)["asr"] > 0.9
    assert attack_success_rate(backdoor["clean"], te, trig, t)["asr"] < 0.2


def test_train_rejects_bad_input():
    m = create_model("small_cnn", 3, (1, 8, 8))
    d = ImageData(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), 4)
    with pytest.raises(ts.InputError, match="4 classes"):
        train(m, d, epochs=1)


def test_metric_helpers():
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 0], [1, 1]]
    assert roc_auc(torch.tensor([0.0, 0.1]), torch.tensor([0.5, 0.9])) == 1.0
    s = torch.arange(100).float()
    t = threshold_at_fpr(s, 0.05)
    assert float((s > t).float().mean()) <= 0.05 + 1e-6
