"""Contract tests over every registry: a method is covered the day it is registered.

Per-method files test that each method finds backdoors; these test what every method owes the
user: typed JSON-able results, an untouched model, and clear errors for bad input.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_unchanged, state_snapshot

import trojanscope as ts
from trojanscope.demo import demo_instance


def _demo_instance(kind: str, name: str):
    inst = demo_instance(kind, name)
    if inst is None:
        pytest.skip(f"{name} needs inputs the demo does not have")
    return inst


@pytest.mark.parametrize("name", ts.available("model_detector"))
def test_model_detector_contract(name, backdoor):
    det = _demo_instance("model_detector", name)
    model = backdoor["backdoored"]
    few = backdoor["train"].clean_subset(5, seed=0)
    snap = state_snapshot(model)
    grads_before = [p.grad for p in model.parameters()]
    res = det.scan(model, few)
    assert_unchanged(model, snap)
    assert [p.grad for p in model.parameters()] == grads_before
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(res, ts.ScanResult) and res.method == name and res.seconds > 0
    assert res.target is None or 0 <= res.target < 10
    json.dumps(res.to_dict())  # JSON-able, including params
    with pytest.raises(ts.InputError):
        det.scan(model, (torch.full((4, 1, 16, 16), float("nan")), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ts.InputError):
        det.scan(model, (few.x[:, :, :8, :8], few.y))
    with pytest.raises(ts.InputError):
        det.scan(model, (few.x, few.y + 10))


@pytest.mark.parametrize("name", ts.available("input_detector"))
def test_input_detector_contract(name, backdoor):
    det = _demo_instance("input_detector", name)
    model = backdoor["backdoored"]
    snap = state_snapshot(model)
    with pytest.raises(ts.InputError, match="fit"):
        det.score(backdoor["test"].x[:3])
    det.fit(model, backdoor["train"].clean_subset(30, seed=0))
    x = backdoor["test"].x[:20]
    s = det.score(x)
    assert s.shape == (20,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    assert det.predict(x).dtype == torch.bool
    assert_unchanged(model, snap)
    with pytest.raises(ts.InputError):
        det.score(torch.full((2, 1, 16, 16), float("nan")))
    with pytest.raises(ts.InputError):
        det.score(torch.rand(2, 3, 16, 16))
    json.dumps(det.detect(x).to_dict())


@pytest.mark.parametrize("name", ts.available("trigger"))
def test_trigger_registry_builds_with_defaults_or_says_why(name):
    x = torch.rand(3, 1, 16, 16)
    try:
        y = ts.create("trigger", name).apply(x)
    except ts.InputError as e:  # a trigger that needs a mask, an image bank... must say so clearly
        assert name in str(e) or "needs" in str(e)
        return
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1



@pytest.mark.parametrize("name", ts.available("model_detector"))
def test_gradient_methods_refuse_forward_only_models(name, backdoor):
    """An ONNX model has no gradients: gradient-based scans refuse it up front, clearly."""
    from trojanscope.models import wrap_model

    cls = ts.get("model_detector", name)
    if not cls.needs_gradients:
        pytest.skip(f"{name} is forward-only")
    det = _demo_instance("model_detector", name)
    fo = wrap_model(backdoor["backdoored"], num_classes=10, in_shape=(1, 16, 16), forward_only=True)
    with pytest.raises(ts.InputError, match="gradient"):
        det.scan(fo, backdoor["train"].clean_subset(2, seed=0))


def test_demo_table_names_registered_methods_and_their_parameters():
    """The demo's settings live in the demo (not on the method classes): every entry must name
    a registered method and parameters it takes, so a rename cannot silently drop a setting."""
    import inspect

    from trojanscope.demo import DEMO_PARAMS, demo_params

    for kind, table in DEMO_PARAMS.items():
        for name, params in table.items():
            assert name in ts.available(kind), (kind, name)
            sig = inspect.signature(ts.get(kind, name))
            assert not set(params or {}) - set(sig.parameters), (kind, name, params)
    for name in ts.available("mitigation"):  # a repair without a scan runs the demo's short scan
        scan = demo_params("mitigation", name)["scan_params"]
        assert scan == demo_instance("model_detector", "neural_cleanse").get_params()
    assert demo_instance("model_detector", "ulp") is None


def test_names_parses_a_list_of_registered_methods():
    from trojanscope._registry import names

    assert names("input_detector", " kde, lid ") == ["kde", "lid"] == names("input_detector", ["kde", "lid"])
    with pytest.raises(ts.InputError, match=r"unknown --guard magic; available: .*kde"):
        names("input_detector", "kde,magic", what="--guard")
    with pytest.raises(ts.InputError, match=r"unknown input detector \(none\)"):
        names("input_detector", " , ")


def test_check_params_names_the_unknown_parameter_and_the_known_ones():
    from trojanscope._registry import check_params

    check_params("input_detector", "kde", {"sigma": 2.0})
    with pytest.raises(ts.InputError, match=r"kde has no parameter 'nope'; its parameters: .*sigma"):
        check_params("input_detector", "kde", {"nope": 1})
