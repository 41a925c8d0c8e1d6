"""Triggers (registry-wide and per kind) and poisoning with each of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trojanscope as ts
from trojanscope.attacks import PoisoningAttack, create_trigger, triggers
from trojanscope.attacks.patch import free_positions
from trojanscope.data import load_dataset

# Parameters for triggers that need some; every other registered trigger is tested with defaults.
EXAMPLES: dict[str, dict] = {
    "mask_pattern": {"mask": torch.zeros(1, 12, 12).index_fill_(1, torch.tensor([2, 3]), 0.7),
                     "pattern": torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(1))},
    "badnets": {"size": 3, "location": "random", "seed": 3},
    "blend": {"alpha": 0.2, "image": "noise"},
}
# More configurations per kind, also run through the common checks.
CONFIGS = [(n, EXAMPLES.get(n, {})) for n in triggers()] + [
    ("badnets", {"size": 4, "pattern": "color", "location": "top_left"}),
    ("badnets", {"size": 3, "pattern": "binary", "location": "random_corner"}),
    ("badnets", {"size": 3, "location": "random_free"}),
    ("blend", {"alpha": 0.1, "mode": "add", "image": torch.rand(7, 1, 10, 10)}),
    ("additive", {"pattern": "local_chessboard"}),
    ("additive", {"pattern": "square"}),
    ("additive", {"pattern": "cross", "signed": True}),
    ("additive", {"pattern": "global", "quantize": False}),
    ("multiply", {"factor": 0.5}),
]


def _images(c: int, n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    x = torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))
    return torch.round(x * 255) / 255


@pytest.mark.parametrize("name, params", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_trigger_common_contract(name, params, channels):
    t = create_trigger(name, **params)
    x = _images(channels)
    before = x.clone()
    out = t.apply(x)
    assert torch.equal(x, before), "apply modified its input"
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x), "the trigger changed nothing"
    assert torch.equal(out, t.apply(x)), "same seed, different result"
    assert torch.equal(t.apply(x, seed=5), t.apply(x, seed=5))
    mp = t.mask_pattern(tuple(x.shape[1:]))
    if mp is not None:
        m, u = mp
        assert m.shape[0] in (1, channels) and tuple(m.shape[1:]) == tuple(x.shape[2:])
        assert u.shape == x.shape[1:]
        assert torch.allclose(x * (1 - m) + u * m, out, atol=1e-6)
    assert isinstance(repr(t), str) and t.get_params()


def test_every_registered_trigger_is_covered():
    assert {"badnets", "blend", "multiply", "additive", "mask_pattern"} <= set(triggers())


def test_triggers_from_command_line_text(tmp_path):
    """``--attack-param k=v`` text is parsed once, by the CLI, into the values a trigger takes:
    the trigger built from the text is the one built from numbers."""
    from trojanscope.cli.train import make_trigger, parse_params

    x = _images(3)
    np.save(tmp_path / "m.npy", np.ones((1, 12, 12), dtype=np.float32) * 0.5)
    pairs = [
        ("badnets", ["size=4", "location=2,3", "pattern=color", "margin=0"],
         {"size": 4, "location": (2, 3), "pattern": "color", "margin": 0}),
        ("badnets", ["size=4.0", "location=Top_Left"], {"size": 4, "location": "top_left"}),
        ("additive", ["pattern=local_chessboard", "amplitude=25/255", "location=(1, 1)",
                      "patch_size=4", "signed=true"],
         {"pattern": "local_chessboard", "amplitude": 25 / 255, "location": (1, 1), "patch_size": 4,
          "signed": True}),
        ("additive", ["pattern=global", "quantize=0"], {"pattern": "global", "quantize": False}),
        ("blend", ["alpha=0.2", "mode=add", "quantize=1"], {"alpha": 0.2, "mode": "add", "quantize": True}),
        ("multiply", ["factor=1.5"], {"factor": 1.5}),
        ("mask_pattern", [f"mask={tmp_path / 'm.npy'}", "pattern=0.25"],
         {"mask": torch.full((1, 12, 12), 0.5), "pattern": 0.25}),
    ]
    for name, text, num in pairs:
        assert torch.equal(make_trigger(name, parse_params(text)).apply(x), create_trigger(name, **num).apply(x))
    # the library itself takes typed values only, and says which one is wrong
    with pytest.raises(ts.InputError, match=r"^additive: amplitude must be a number in \[-1, 1\] or None, got '25/255'$"):
        create_trigger("additive", amplitude="25/255").apply(x)
    with pytest.raises(ts.InputError, match=r"^badnets: size must be an int >= 1, got 0$"):
        make_trigger("badnets", parse_params(["size=0"]))  # before any image is poisoned


@pytest.mark.parametrize("name, params, msg", [
    ("badnets", {"size": 0}, "size"),
    ("badnets", {"size": 20}, "does not fit"),
    ("badnets", {"location": "middle"}, "location"),
    ("badnets", {"location": (11, 11)}, "does not fit"),
    ("badnets", {"location": "11,11"}, "location must be"),
    ("badnets", {"location": (2, -1)}, "location must be"),
    ("badnets", {"pattern": "stripes"}, "pattern"),
    ("blend", {"alpha": 2}, "alpha"),
    ("blend", {"mode": "screen"}, "mode"),
    ("blend", {"image": "/no/such/file.png"}, "no file"),
    ("blend", {"image": torch.full((1, 12, 12), 3.0)}, r"\[0, 1\]"),
    ("multiply", {"factor": -1}, "factor"),
    ("multiply", {"factor": "two"}, "number"),
    ("multiply", {"quantize": "yes"}, "quantize must be True or False"),
    ("additive", {"pattern": "stripes"}, "pattern"),
    ("additive", {"amplitude": "abc"}, "number"),
    ("additive", {"pattern": "square", "channel": 5}, "channel"),
    ("additive", {"pattern": "local_chessboard", "patch_size": 40}, "does not fit"),
    ("mask_pattern", {}, "mask="),
    ("mask_pattern", {"mask": torch.ones(1, 5, 5)}, "mask is"),
    ("mask_pattern", {"mask": torch.full((1, 12, 12), 2.0)}, r"\[0, 1\]"),
])
def test_bad_trigger_parameters_give_input_error(name, params, msg):
    with pytest.raises(ts.InputError, match=msg):
        create_trigger(name, **params).apply(_images(3))


def test_badnets_placements():
    x = torch.zeros(40, 1, 12, 12)
    fixed = create_trigger("badnets", size=3, location=(2, 5)).apply(x)
    assert torch.all(fixed[:, :, 2:5, 5:8] == 1) and float(fixed.sum()) == 40 * 9
    corners = create_trigger("badnets", size=3, location="random_corner", margin=0, seed=1).apply(x)
    tl, br = corners[:, 0, 0, 0] == 1, corners[:, 0, 11, 11] == 1
    tr, bl = corners[:, 0, 0, 11] == 1, corners[:, 0, 11, 0] == 1
    assert torch.all(tl.int() + br.int() + tr.int() + bl.int() == 1)  # exactly one corner each
    assert int(tl.sum()) > 0 and int(br.sum()) > 0  # and not always the same one
    rnd = create_trigger("badnets", size=3, location="random", seed=1).apply(x)
    assert len({tuple(torch.nonzero(r[0])[0].tolist()) for r in rnd}) > 10
    assert not torch.equal(rnd, create_trigger("badnets", size=3, location="random", seed=2).apply(x))
    # colour patterns differ between channels, binary ones do not
    x3 = torch.zeros(1, 3, 12, 12)
    col = create_trigger("badnets", size=5, pattern="color").apply(x3)[0, :, 6:11, 6:11]
    binp = create_trigger("badnets", size=5, pattern="binary").apply(x3)[0, :, 6:11, 6:11]
    assert not torch.equal(col[0], col[1]) and torch.equal(binp[0], binp[2])
    assert 0 < float(binp.mean()) < 1


def test_random_free_patch_never_covers_the_digit():
    """Borji exp. II: the patch goes to a blank region of the digit image."""
    d = load_dataset("digits", "train", size=16)
    x = d.x[:300]
    s, tol, gap = 3, 0.1, 1
    t = create_trigger("badnets", size=s, location="random_free", background_tol=tol, gap=gap, seed=4)
    out = t.apply(x)
    rows, cols = free_positions(x, s, torch.Generator().manual_seed(4), background_tol=tol, gap=gap)
    fg = (x - 0).abs().amax(1) > tol  # digits have a black background
    covered = torch.stack([fg[i, r : r + s, c : c + s].any()
                           for i, (r, c) in enumerate(zip(rows, cols, strict=True))])
    assert not covered.any(), f"{int(covered.sum())} patches cover the digit"
    assert torch.equal(out[torch.arange(300), 0, rows + 1, cols + 1], torch.ones(300))
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 20  # placements are spread out
    # a plain random location does cover digits: the check above is not vacuous
    rr, cc = torch.randint(0, 14, (2, 300), generator=torch.Generator().manual_seed(0))
    assert torch.stack([fg[i, r : r + s, c : c + s].any()
                        for i, (r, c) in enumerate(zip(rr, cc, strict=True))]).any()


def test_random_free_falls_back_to_least_overlap():
    x = torch.ones(2, 1, 6, 6)
    x[:, :, 0, :] = 0  # border median is 1 (the "background"); the top row is foreground-ish
    x[1] = 0.5 * torch.rand(1, 6, 6) + 0.5
    out = create_trigger("badnets", size=3, location="random_free", pattern=torch.zeros(3, 3), gap=0
                         ).apply(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_blend_formulas_exact():
    x = _images(3)
    img = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(9))
    mix = create_trigger("blend", image=img, alpha=0.3, mode="mix").apply(x)
    assert torch.allclose(mix, 0.7 * x + 0.3 * img, atol=1e-6)
    add = create_trigger("blend", image=img, alpha=0.1, mode="add").apply(x)
    assert torch.allclose(add, (x + 0.1 * img).clamp(0, 1), atol=1e-6)
    assert torch.equal(create_trigger("multiply", factor=2).apply(x), (2 * x).clamp(0, 1))
    # grey image on colour input: repeated; other size: resized
    grey = create_trigger("blend", image=img[:1, :6, :6], alpha=0.5).apply(x)
    assert torch.allclose(grey[:, 0] - 0.5 * x[:, 0], grey[:, 1] - 0.5 * x[:, 1], atol=1e-6)


def test_blend_bank_draws_one_target_image_per_sample():
    """Borji exp. III: I_source + 0.1 * I_target with a random target-class image per sample."""
    x = _images(1, n=30)
    bank = torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    t = create_trigger("blend", image=bank, alpha=0.1, mode="add", seed=0)
    out = t.apply(x)
    cand = (x[:, None] + 0.1 * bank[None]).clamp(0, 1)  # [N, M, 1, H, W]
    err = (out[:, None] - cand).abs().flatten(2).amax(2)
    assert torch.all(err.min(1).values < 1e-6)
    picks = err.argmin(1)
    assert len(set(picks.tolist())) >= 3
    assert torch.equal(out, t.apply(x))
    assert not torch.equal(out, t.apply(x, seed=1))
    assert t.mask_pattern((1, 12, 12)) is None


def test_additive_patterns_match_the_paper():
    v = create_trigger("additive", pattern="chessboard").perturbation((3, 8, 8))
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    expect = torch.where((i + j) % 2 == 0, 2 / 255, 0.0)
    assert torch.allclose(v, expect.expand(3, -1, -1))
    # any two adjacent pixels: exactly one perturbed (L-RED A.7)
    assert torch.all((v[0, :, 1:] > 0) ^ (v[0, :, :-1] > 0))
    assert float(v.norm()) == pytest.approx(2 / 255 * (3 * 32) ** 0.5)
    g = create_trigger("additive", pattern="global").perturbation((1, 8, 8))[0]
    win = g.unfold(0, 2, 1).unfold(1, 2, 1)  # every 2x2 window: one and only one pixel (A.4.1)
    assert torch.all((win > 0).sum((-1, -2)) == 1)
    signed = create_trigger("additive", pattern="chessboard", signed=True).perturbation((1, 4, 4))
    assert set((signed * 255).round().unique().tolist()) == {-2.0, 2.0}
    lc = create_trigger("additive", pattern="local_chessboard").perturbation((1, 28, 28))[0]
    assert torch.all(lc[:22] == 0) and torch.all(lc[:, :22] == 0)  # 6x6 at the bottom right
    assert int((lc > 0).sum()) == 18 and float(lc.max()) == pytest.approx(25 / 255)
    sq = create_trigger("additive", pattern="square", pattern_seed=3).perturbation((3, 32, 32))
    nz = torch.nonzero(sq)
    assert len(nz) == 4 and len(set(nz[:, 0].tolist())) == 1 and float(sq.max()) == pytest.approx(50 / 255)
    sq2 = create_trigger("additive", pattern="square", pattern_seed=4).perturbation((3, 32, 32))
    assert not torch.equal(sq, sq2)  # random-but-fixed: depends on the seed only
    for pattern, count in (("pixel", 1), ("cross", 5), ("l_shape", 4)):
        p = create_trigger("additive", pattern=pattern).perturbation((1, 16, 16))
        assert int((p > 0).sum()) == count, pattern
    fixed = create_trigger("additive", pattern="cross", location=(0, 0)).perturbation((1, 5, 5))[0]
    assert fixed[1].tolist()[:3] == pytest.approx([60 / 255] * 3) and fixed[0, 1] > 0 and fixed[0, 0] == 0


def test_additive_is_clipped_then_rounded_to_8_bits():
    x = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))  # not on the 8-bit grid
    t = create_trigger("additive", pattern="chessboard")
    out = t.apply(x)
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)
    assert torch.equal(out, torch.round((x + t.perturbation((3, 10, 10))).clamp(0, 1) * 255) / 255)
    xq = torch.round(x * 255) / 255
    d = ((t.apply(xq) - xq) * 255).round()
    assert set(d.unique().tolist()) <= {0.0, 1.0, 2.0}  # 1 only where clipping at 1 cuts it
    raw = create_trigger("additive", pattern="chessboard", quantize=False).apply(x)
    assert torch.allclose(raw, (x + t.perturbation((3, 10, 10))).clamp(0, 1))


def test_mask_pattern_embedding():
    x = _images(3)
    g = torch.Generator().manual_seed(0)
    for m in (torch.rand(1, 12, 12, generator=g), torch.rand(3, 12, 12, generator=g)):
        u = torch.rand(3, 12, 12, generator=g)
        t = create_trigger("mask_pattern", mask=m, pattern=u)
        assert torch.allclose(t.apply(x), x * (1 - m) + u * m, atol=1e-6)
        mm, uu = t.mask_pattern((3, 12, 12))
        assert torch.equal(mm, m) and torch.equal(uu, u)
    # the mask+pattern of a BadNets patch re-applied through mask_pattern gives the same images
    patch = create_trigger("badnets", size=4, pattern="color", location="top_right")
    m, u = patch.mask_pattern((3, 12, 12))
    assert torch.equal(create_trigger("mask_pattern", mask=m, pattern=u).apply(x), patch.apply(x))


@pytest.mark.parametrize("name, params", CONFIGS[: len(triggers())])
def test_poisoning_with_each_trigger(name, params):
    d = load_dataset("digits", "train", size=12)
    x, y = d.x[:200], d.y[:200]
    trig = create_trigger(name, **params)
    attack = PoisoningAttack(trigger=trig, target=3, sources=[1, 7], count_per_source=5,
                             remove_originals=True, seed=2)
    xp, yp, idx = attack.poison(x, y, 10)
    assert len(xp) == len(x) and len(idx) == 10
    assert torch.all(torch.isin(y[idx], torch.tensor([1, 7]))) and torch.all(yp[idx] == 3)
    if torch.equal(trig.apply(x[idx], seed=1), trig.apply(x[idx], seed=2)):  # no per-image draws
        assert torch.equal(xp[idx], trig.apply(x[idx], seed=attack.seed + 1))
    assert torch.all((xp[idx] - x[idx]).flatten(1).abs().amax(1) > 0)
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(xp[rest], x[rest]) and torch.equal(yp[rest], y[rest])
    xa, ya, idx_a = PoisoningAttack(trigger=trig, target=3, rate=0.05, seed=2).poison(x, y, 10)
    assert len(xa) == 210 and torch.all(ya[idx_a] == 3) and torch.all(y[:200] == ya[:200])
