"""Certified defences (Steinhardt, Koh & Liang 2017): solver, sanitiser, Algorithm 1, Prop. 1, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from trojanscope.certify import (
    Certifier,
    StackedSets,
    algorithm1,
    fit_feasible_set,
    sanitize,
    worst_point,
)
from trojanscope.errors import InputError

DT = torch.float64


def blobs(n: int = 120, seed: int = 0):
    """A small separable 2-D problem inside [0, 1]^2: class 1 around (0.3, 0.3), class 0 around (0.7, 0.65)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([0.3, 0.3], dtype=DT) + 0.07 * torch.randn(n, 2, generator=g, dtype=DT)
    b = torch.tensor([0.7, 0.65], dtype=DT) + 0.07 * torch.randn(n, 2, generator=g, dtype=DT)
    x = torch.cat([a, b]).clamp(0.01, 0.99)
    y = torch.cat([torch.ones(n), torch.zeros(n)]).long()
    return x, y


CONFIGS = [("sphere", None), ("sphere", (0.0, 1.0)), ("slab", (0.0, 1.0)),
           ("sphere+slab", None), ("sphere+slab", (0.0, 1.0))]


@pytest.mark.parametrize("defense,box", CONFIGS)
def test_worst_point_matches_grid_brute_force(defense, box):
    x, y = blobs()
    fs = fit_feasible_set(x, y, defense=defense, percentile=70, box=box)
    sets = StackedSets.of([fs])
    # a dense grid covering every feasible point (spheres are small, the box is [0, 1]^2)
    h = 1 / 400
    ax = torch.arange(-0.25, 1.25 + h, h, dtype=DT)
    grid = torch.cartesian_prod(ax, ax)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        theta = torch.randn(1, 3, generator=g, dtype=DT)
        xw, yw, lw = sets.worst(theta)
        assert bool(fs.contains(xw, (yw > 0).long()).all()), "the solver left F"
        best = -1.0
        for lab in (0, 1):
            inside = fs.contains(grid, torch.full((len(grid),), lab))
            assert inside.sum() > 100
            ys = 1.0 if lab == 1 else -1.0
            loss = (1 - ys * (grid[inside] @ theta[0, :2] + theta[0, 2])).clamp(min=0)
            best = max(best, float(loss.max()))
        w = float(theta[0, :2].norm())
        assert float(lw) >= best - 1e-9, "brute force found a worse feasible point than the solver"
        assert float(lw) <= best + 2 * h * w + 1e-9, "solver beyond the grid optimum + grid resolution"


def test_box_solver_matches_scipy_in_higher_dimension():
    from scipy.optimize import linprog

    g = torch.Generator().manual_seed(3)
    D = 30
    for _ in range(5):
        c = torch.randn(D, generator=g, dtype=DT)
        mu = 0.2 + 0.6 * torch.rand(D, generator=g, dtype=DT)
        v = torch.randn(D, generator=g, dtype=DT)
        v = v / v.norm()
        s = torch.tensor(0.1, dtype=DT)
        x = worst_point(c, mu, normal=v, slab=s, lo=0.0, hi=1.0)  # box ∩ slab: a linear program
        ref = linprog(c.numpy(), A_ub=torch.stack([v, -v]).numpy(),
                      b_ub=[float(s + v @ mu), float(s - v @ mu)], bounds=[(0, 1)] * D)
        assert abs(float(c @ x) - ref.fun) < 1e-7
        assert float((x - mu) @ v) <= s + 1e-9 and bool((x >= 0).all() and (x <= 1).all())


def test_box_sphere_solver_stays_inside_with_dominant_coordinates():
    """One huge objective coordinate and many tiny ones (MNIST border pixels): no round-off exit."""
    g = torch.Generator().manual_seed(5)
    D = 784
    for _ in range(5):
        c = 1e-6 * torch.randn(D, generator=g, dtype=DT)
        c[:3] = torch.tensor([40.0, -25.0, 10.0], dtype=DT)
        mu = torch.rand(D, generator=g, dtype=DT) * 0.3
        mu[torch.rand(D, generator=g) < 0.3] = 0.0  # always-black pixels: centroid on the box face
        v = torch.randn(D, generator=g, dtype=DT)
        v = v / v.norm()
        r, s = torch.tensor(2.5, dtype=DT), torch.tensor(0.4, dtype=DT)
        x = worst_point(c, mu, radius=r, normal=v, slab=s, lo=0.0, hi=1.0)
        assert float((x - mu).norm()) <= float(r) * (1 + 1e-12)
        assert abs(float((x - mu) @ v)) <= float(s) * (1 + 1e-12)
        assert bool((x >= 0).all() and (x <= 1).all())


def test_slab_alone_needs_a_bound():
    x, y = blobs()
    with pytest.raises(InputError, match="unbounded"):
        fit_feasible_set(x, y, defense="slab", box=None)
    with pytest.raises(InputError, match="unknown defense"):
        fit_feasible_set(x, y, defense="cube")


def test_sanitize_keeps_percentile_and_drops_outliers():
    x, y = blobs(200)
    fs = fit_feasible_set(x, y, defense="sphere", percentile=70)
    keep = sanitize(x, y, fs)
    for k in (0, 1):
        assert abs(float(keep[y == k].double().mean()) - 0.7) < 0.02
    far = torch.tensor([[0.95, 0.02], [0.3, 0.31]], dtype=DT)
    assert sanitize(far, torch.tensor([1, 1]), fs).tolist() == [False, True]
    # works on any feature matrix, e.g. images [N, C, H, W]
    assert sanitize(x.reshape(-1, 1, 1, 2), y, fs).equal(keep)
    # data-dependent: 60 poison points far off pull the class-1 centroid, and the sanitiser with it
    xp = torch.cat([x, torch.full((60, 2), 0.02, dtype=DT)])
    yp = torch.cat([y, torch.ones(60, dtype=torch.long)])
    dd = fs.recentered(xp, yp)
    assert float((dd.centroids[1] - fs.centroids[1]).norm()) > 0.05
    assert sanitize(xp, yp, fs, data_dependent=True).equal(dd.contains(xp, yp))


def test_algorithm1_bound_monotone_attack_feasible_and_proposition1():
    x, y = blobs(100)
    eps = [0.0, 0.05, 0.1, 0.2, 0.3]
    for defense, box, cap in (("sphere", None, None), ("sphere+slab", (0.0, 1.0), None),
                              ("slab", (0.0, 1.0), None), ("sphere+slab", (0.0, 1.0), 12)):
        cert = Certifier(defense=defense, box=box, rho=3.0, eta=0.5, train_iters=600, max_steps=cap)
        rows = cert.certify(x, y, eps, classes=[1, 0])
        ub = [r.upper_bound for r in rows]
        assert all(b >= a - 1e-12 for a, b in zip(ub, ub[1:], strict=False)), ub
        assert ub[-1] > ub[0] + 1e-3  # poisoning does raise the worst-case loss
        for r in rows[1:]:
            # Proposition 1, eq. (6): lower <= M <= U* <= lower + Regret(eps n) / (eps n)
            u_alg = r.extra["upper_bound_alg1"]
            assert r.lower_bound <= u_alg + 1e-6, (defense, r.eps)
            assert r.upper_bound <= u_alg + 1e-12
            assert u_alg - r.lower_bound <= r.extra["regret_per_step"] + 1e-6
            assert r.extra["regret_per_step"] <= r.extra["regret_bound_per_step"] + 1e-9
            assert r.extra["poison_kept"] == 1.0  # the oracle sanitiser keeps every attack point
            assert r.extra["n_poison"] == round(r.eps * len(x))

    # the candidate attack itself never leaves F
    fs = fit_feasible_set(x, y, defense="sphere+slab", box=(0.0, 1.0))
    Y = torch.where(y == 1, 1.0, -1.0).to(DT)[None]
    run = algorithm1(x, Y, StackedSets.of([fit_feasible_set(x, (Y[0] > 0).long(), defense="sphere+slab",
                                                            box=(0.0, 1.0))]),
                     steps=40, eps=0.2, rho=3.0, eta=0.5)
    assert bool(fs.contains(run.x_p[0], torch.where(run.y_p[0] > 0, 1, 0)).all())


def test_data_dependent_sanitiser_is_more_vulnerable():
    from trojanscope.data import load_dataset

    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    rows = Certifier(defense="sphere+slab", data_dependent=True, train_iters=400).certify(
        tr.x, tr.y, [0.3], te.x, te.y, classes=[1, 7])
    oracle, dd = rows
    assert dd.defense == "sphere+slab (data-dependent)"
    assert dd.attack_loss > oracle.attack_loss + 0.01
    assert dd.upper_bound > oracle.upper_bound
    assert "not a certificate" in dd.extra["note"]


def test_one_vs_rest_reports_each_class():
    from trojanscope.data import load_dataset

    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    rows = Certifier(defense="sphere+slab", train_iters=200).certify(
        tr.x, tr.y, [0.0, 0.05], te.x, te.y, classes=[0, 1, 2])
    assert sorted({r.extra["class"] for r in rows}) == [0, 1, 2]
    for k in (0, 1, 2):
        mine = sorted((r for r in rows if r.extra["class"] == k), key=lambda r: r.eps)
        assert mine[1].upper_bound >= mine[0].upper_bound
        assert mine[0].attack_error < 0.1  # each one-vs-rest SVM works on clean data


def test_cli_certify_digits(tmp_path):
    from typer.testing import CliRunner

    from trojanscope.cli.main import app

    js, png = tmp_path / "c.json", tmp_path / "bound.png"
    res = CliRunner().invoke(app, ["certify", "--data", "digits", "--classes", "1,7", "--eps", "0,0.1",
                                   "--defense", "sphere,slab", "--json", str(js), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    doc = json.loads(js.read_text())
    assert doc["schema"] == 1
    assert {(r["defense"], r["eps"]) for r in doc["rows"]} == {
        ("sphere", 0.0), ("sphere", 0.1), ("slab", 0.0), ("slab", 0.1)}
    for r in doc["rows"]:
        assert {"upper_bound", "attack_loss", "attack_error"} <= r.keys()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(app, ["certify", "--data", "digits", "--defense", "cube"])
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)


def test_mnist_1_7_small_certificate(shared_data):
    """Real MNIST-1-7 pixels (300 per class): sanitiser keeps ~70%, Prop. 1 holds, attack stays in F."""
    from trojanscope.data import load_dataset

    tr = load_dataset("mnist", "train", root=shared_data, limit=6000).of_classes([1, 7]).clean_subset(300)
    te = load_dataset("mnist", "test", root=shared_data, limit=1000).of_classes([1, 7])
    fs = fit_feasible_set(tr.x, tr.y, defense="sphere", box=(0.0, 1.0))
    assert abs(float(sanitize(tr.x, tr.y, fs).double().mean()) - 0.7) < 0.02
    rows = Certifier(defense="sphere+slab", train_iters=300).certify(tr.x, tr.y, [0.0, 0.05], te.x, te.y,
                                                                    classes=[1, 7])
    clean, attacked = rows
    assert clean.attack_error < 0.05  # a working 1-vs-7 SVM
    assert attacked.lower_bound <= attacked.extra["upper_bound_alg1"] + 1e-6
    assert attacked.upper_bound >= clean.upper_bound
    assert attacked.extra["poison_kept"] == 1.0
