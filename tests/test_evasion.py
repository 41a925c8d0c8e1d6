"""Evasion attacks on the clean model of the ``backdoor`` fixture."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_unchanged, state_snapshot

import trojanscope as ts
from trojanscope import _registry

N = 40
FAST_CW = {"steps": 40, "binary_search_steps": 4, "lr": 0.1}
# (name, params, norm, eps): every attack must stay within eps in its norm
BOUNDED = [
    ("fgsm", {"eps": 0.3}, "linf", 0.3),
    ("bim", {"eps": 0.3, "steps": 10}, "linf", 0.3),
    ("pgd", {"eps": 0.3, "steps": 15, "step_size": 0.04}, "linf", 0.3),
    ("pgd", {"eps": 2.0, "steps": 15, "step_size": 0.3, "norm": "l2"}, "l2", 2.0),
]


@pytest.fixture(scope="module")
def victim(backdoor):
    m = backdoor["clean"]
    return m, backdoor["test"].x[:N], backdoor["test"].y[:N]


class _Scale(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, z):
        return z * self.k


def _acc(m, x, y):
    with torch.no_grad():
        return float((m(x).argmax(1) == y).float().mean())


def _grads(m):
    return [None if p.grad is None else p.grad.clone() for p in m.parameters()]


def _same_grads(m, before):
    return all((a is None and p.grad is None) or (a is not None and p.grad is not None and
               torch.equal(a, p.grad)) for a, p in zip(before, m.parameters(), strict=True))


def _norm(d, norm):
    d = d.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize("name, params, norm, eps", BOUNDED)
def test_untargeted_attacks_fool_the_model_within_eps(victim, name, params, norm, eps):
    m, x, y = victim
    snap, x0, grads = state_snapshot(m), x.clone(), _grads(m)
    assert _acc(m, x, y) > 0.9
    xa = _registry.create("evasion", name, **params).run(m, x, y)
    assert torch.equal(x, x0)
    assert xa.shape == x.shape and float(xa.min()) >= 0 and float(xa.max()) <= 1
    assert float(_norm(xa - x, norm).max()) <= eps + 1e-5
    assert _acc(m, xa, y) < 0.4, f"{name} barely changed the accuracy"
    assert_unchanged(m, snap)
    assert _same_grads(m, grads), "the attack wrote the model's .grad"


@pytest.mark.parametrize("name, params", [("pgd", {"eps": 0.3, "steps": 20, "step_size": 0.03}),
                                          ("bim", {"eps": 0.3, "steps": 20, "step_size": 0.03}),
                                          ("cw", FAST_CW)])
def test_targeted_attacks_hit_the_target(victim, name, params):
    m, x, y = victim
    target = (y + 1) % 10
    attack = _registry.create("evasion", name, **params)
    xa = attack.run(m, x, target=target)
    assert _acc(m, xa, target) >= 0.8
    # the same through (y=targets, targeted=True), and one int target for every sample
    assert torch.equal(attack.run(m, x, target, targeted=True), xa)
    x7 = attack.run(m, x[:10], target=7)
    assert _acc(m, x7, torch.full((10,), 7)) >= 0.8


def test_carlini_wagner_finds_small_l2_examples(victim):
    m, x, y = victim
    snap = state_snapshot(m)
    xa = _registry.create("evasion", "cw", **FAST_CW).run(m, x, y)
    assert _acc(m, xa, y) <= 0.1
    l2 = _norm(xa - x, "l2")
    # minimal-norm: much smaller than what PGD-L2 needs for a similar success rate
    assert float(l2.mean()) < 1.5 and float(l2.max()) > 0
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    # a larger confidence margin kappa needs larger perturbations
    xk = _registry.create("evasion", "cw", **FAST_CW, kappa=5.0).run(m, x, y)
    assert float(_norm(xk - x, "l2").mean()) > float(l2.mean())
    assert_unchanged(m, snap)


def test_model_mode_and_flags_are_restored(victim):
    m, x, y = victim
    net = copy.deepcopy(m).train()
    for p in net.parameters():
        p.grad = None
    snap = state_snapshot(net)
    _registry.create("evasion", "pgd", steps=2).run(net, x[:8], y[:8])
    _registry.create("evasion", "cw", steps=2, binary_search_steps=1).run(net, x[:8], y[:8])
    assert net.training and all(p.requires_grad and p.grad is None for p in net.parameters())
    assert_unchanged(net, snap)


def test_every_registered_attack_runs_with_defaults(victim):
    m, x, y = victim
    assert {"fgsm", "pgd", "bim", "cw"} <= set(_registry.available("evasion"))
    for name in _registry.available("evasion"):
        params = FAST_CW if name == "cw" else {}
        xa = _registry.create("evasion", name, **params).run(m, x[:6])  # labels = predictions
        assert xa.shape == (6, *x.shape[1:]) and not torch.equal(xa, x[:6]), name


def test_random_start_is_seeded_and_probabilities_are_handled(victim):
    m, x, y = victim
    a = _registry.create("evasion", "pgd", eps=0.1, steps=1, step_size=0.01, seed=1)
    assert torch.equal(a.run(m, x[:5], y[:5]), a.run(m, x[:5], y[:5]))
    b = _registry.create("evasion", "pgd", eps=0.1, steps=1, step_size=0.01, seed=2)
    assert not torch.equal(a.run(m, x[:5], y[:5]), b.run(m, x[:5], y[:5]))
    # a model returning probabilities is attacked through its log (the same gradients); logits
    # are cooled down so that float32 softmax does not saturate
    cool = torch.nn.Sequential(m, _Scale(0.1))
    probs = torch.nn.Sequential(cool, torch.nn.Softmax(dim=1))
    fg = _registry.create("evasion", "fgsm", eps=0.3)
    differ = (fg.run(probs, x[:8], y[:8]) - fg.run(cool, x[:8], y[:8])).abs() > 1e-6
    assert float(differ.float().mean()) < 0.01
    small = _registry.create("evasion", "pgd", eps=0.3, steps=5, step_size=0.06, batch_size=3)
    assert _acc(m, small.run(m, x[:10], y[:10]), y[:10]) < 0.5  # batches of 3 work


@pytest.mark.parametrize("name, params, call, msg", [
    ("pgd", {"eps": -1}, {}, "eps"),
    ("pgd", {"norm": "l1"}, {}, "norm"),
    ("pgd", {"steps": 0}, {}, "steps"),
    ("pgd", {"eps": float("inf")}, {}, r"^pgd: eps must be a number > 0, got inf$"),
    ("pgd", {"eps": "0.1"}, {}, r"^pgd: eps must be a number > 0, got '0.1'$"),
    ("bim", {"eps": float("inf")}, {}, "step_size"),
    ("fgsm", {"eps": "big"}, {}, "number"),
    ("cw", {"kappa": -1}, {}, "kappa"),
    ("fgsm", {}, {"targeted": True}, "targets"),
    ("fgsm", {}, {"target": 10}, "10 classes"),
    ("fgsm", {}, {"x": torch.rand(3, 16, 16)}, "4-D"),
    ("fgsm", {}, {"x": torch.rand(2, 3, 16, 16)}, "cannot process"),
    ("fgsm", {}, {"model": "model.pt"}, "nn.Module"),
])
def test_bad_input_gives_input_error(victim, name, params, call, msg):
    m, x, _ = victim
    kw = {"model": m, "x": x[:4], **call}
    with pytest.raises(ts.InputError, match=msg):
        _registry.create("evasion", name, **params).run(kw.pop("model"), kw.pop("x"), **kw)


def test_fgsm_is_borji_eq1_and_unbounded_bim_iterates_it(victim):
    m, x, y = victim
    net = copy.deepcopy(m).eval()
    t = (y[:8] + 3) % 10
    xi = x[:8].clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(net(xi), t, reduction="sum")
    (g,) = torch.autograd.grad(loss, xi)
    expect = (x[:8] - 0.1 * g.sign()).clamp(0, 1)  # Borji eq. 1
    got = _registry.create("evasion", "fgsm", eps=0.1).run(m, x[:8], target=t)
    assert torch.allclose(got, expect, atol=1e-6)
    # Borji iterates FGSM without a ball: eps=inf, a fixed step
    it = _registry.create("evasion", "bim", eps=float("inf"), step_size=0.1, steps=4).run(m, x[:8], target=t)
    linf = float((it - x[:8]).abs().max())
    assert 0.2 < linf <= 0.4 + 1e-6
