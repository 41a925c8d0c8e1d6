"""One contract test per registry kind, parametrised over the registry.

`test_registry_common.py` runs every detector on the tiny backdoored model (untouched model,
JSON-able result, clear errors). This file checks what every registered entry owes the rest of
the package, whatever its kind, cheaply:

* estimator classes (model and input detectors, mitigations, triggers, evasion attacks): the
  scikit-learn convention: keyword-only parameters stored under their own names with no logic
  in ``__init__``, a ``get_params()`` that rebuilds an equal object, ``name`` = registry name;
* evasion attacks: a real run on the tiny model stays in [0, 1] and in its budget, lowers the
  accuracy and leaves the model as it was;
* mitigations: bad input is refused before any work;
* architectures: the features/classifier convention the introspection relies on, the forward
  shape, clear errors for bad shapes;
* datasets: tiny files in each reader's own format read back exactly; a missing folder is a
  ``DataNotFoundError`` that says where it looked;
* model formats: save and load give the same outputs.

A new entry is covered by these tests the day it is registered.
"""

from __future__ import annotations

import gzip
import inspect
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from _docstrings import documented_params
from conftest import assert_unchanged, state_snapshot
from torch import nn

import trojanscope as ts
from trojanscope._params import (
    Boolean,
    Configurable,
    Constraint,
    FilePath,
    InstanceOf,
    Interval,
    Options,
    Pair,
    describe_briefly,
)
from trojanscope._registry import _PROVIDERS

ESTIMATOR_KINDS = ["model_detector", "input_detector", "mitigation", "trigger", "evasion"]
KINDS = [*ESTIMATOR_KINDS, "arch", "dataset", "format"]


def _entries(*kinds: str) -> list[Any]:
    return [pytest.param(k, n, id=f"{k}:{n}") for k in kinds if k in _PROVIDERS for n in ts.available(k)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


# --- every kind -------------------------------------------------------------------------


def test_every_kind_has_a_provider_and_entries() -> None:
    missing = [k for k in KINDS if k != "format" and k not in _PROVIDERS]
    assert not missing, f"registry kinds without a provider: {missing}"
    for kind in _PROVIDERS:
        names = ts.available(kind)
        assert names, f"nothing registered under {kind!r}"
        for name in names:
            assert ts.get(kind, name).registry_name == name


@pytest.mark.parametrize("kind", list(_PROVIDERS))
def test_unknown_name_is_a_clear_error(kind: str) -> None:
    with pytest.raises(ts.InputError, match="available: "):
        ts.get(kind, "no_such_entry")


# --- estimators ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), _entries(*ESTIMATOR_KINDS))
def test_estimator_convention(kind: str, name: str) -> None:
    cls = ts.get(kind, name)
    assert inspect.isclass(cls), f"{kind} {name} should be a class"
    sig = inspect.signature(cls.__init__)
    params = {n: p for n, p in sig.parameters.items() if n != "self"}
    positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert not positional, f"{cls.__name__}: parameters must be keyword-only, not {positional}"
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    assert not required, f"{cls.__name__}: every parameter needs a default, not {required}"

    obj = cls()
    got = obj.get_params()
    assert set(got) == set(params), "get_params() must return exactly the constructor parameters"
    for n, p in params.items():  # stored as given: no logic in __init__
        assert _same(got[n], p.default), f"{cls.__name__}.{n} = {got[n]!r}, default {p.default!r}"
    clone = cls(**got)
    assert _same(clone.get_params(), got)
    assert obj.name == name
    assert repr(obj).startswith(cls.__name__ + "(")
    json.dumps({k: v for k, v in got.items() if not isinstance(v, (torch.Tensor, nn.Module))}, default=str)


@pytest.mark.parametrize(("kind", "name"), _entries("model_detector", "input_detector", "mitigation"))
def test_parameters_survive_a_round_trip_through_set_values(kind: str, name: str) -> None:
    """Changing one numeric parameter changes get_params() and nothing else."""
    cls = ts.get(kind, name)
    base = cls().get_params()
    numeric = [k for k, v in base.items() if type(v) in (int, float) and k != "seed" and v]
    if not numeric:
        pytest.skip(f"{name} has no numeric parameter")
    key = numeric[0]
    changed = cls(**{**base, key: type(base[key])(base[key] * 2)}).get_params()
    assert changed[key] == base[key] * 2
    assert _same({k: v for k, v in changed.items() if k != key}, {k: v for k, v in base.items() if k != key})


@pytest.mark.parametrize(("kind", "name"), _entries(*ESTIMATOR_KINDS))
def test_parameters_are_documented(kind: str, name: str) -> None:
    """Every constructor parameter is in the docstring's ``Args:``, and nothing else is."""
    cls = ts.get(kind, name)
    params = {n for n in inspect.signature(cls.__init__).parameters if n != "self"}
    documented = documented_params(cls)
    assert documented is not None, f"{cls.__name__} has no Args: section"
    assert not params - documented, f"{cls.__name__}: undocumented parameters {sorted(params - documented)}"
    assert not documented - params, f"{cls.__name__}: documents unknown parameters {sorted(documented - params)}"


# --- parameter constraints (every estimator kind) -------------------------------------------

METHOD_KINDS = ("model_detector", "input_detector", "mitigation")
#: every kind whose entries declare ``parameter_constraints``
CONSTRAINED_KINDS = (*METHOD_KINDS, "trigger", "evasion")


class _Tripwire(nn.Module):
    """A model that fails the test if a method runs it: parameter checks come before any work."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.in_shape = (1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran before the parameters were checked")


def _invalid_values(c: Constraint) -> list[Any]:
    """Values that ``c`` refuses (a new kind of constraint must say how to break it here)."""
    if isinstance(c, Interval):
        out: list[Any] = ["1", True, float("nan"), float("inf")]
        if c.kind is int:
            out.append(1.5)
        if c.lo is not None:
            out.append(c.lo if c.closed in ("right", "neither") else c.lo - 1)
        if c.hi is not None:
            out.append(c.hi if c.closed in ("left", "neither") else c.hi + 1)
        return out
    if isinstance(c, Options):
        return ["no_such_option", 12345]
    if isinstance(c, Boolean):
        return [1, "yes"]
    if isinstance(c, InstanceOf):
        return [object()]
    if isinstance(c, FilePath):
        return ["no_such_option", "notes.txt", 12345]
    if isinstance(c, Pair):
        return [(), "1,2", *[(v, v) for v in _invalid_values(c.item)]]
    raise AssertionError(f"no invalid example for {c!r}")


def _run_entry(kind: str, obj: Any) -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    if kind == "model_detector":
        obj.scan(_Tripwire(), (x, y))
    elif kind == "input_detector":
        obj.fit(_Tripwire(), (x, y))
    elif kind == "trigger":
        obj.apply(x)
    elif kind == "evasion":
        obj.run(_Tripwire(), x, y)
    else:
        obj.apply(_Tripwire(), (x, y))


@pytest.mark.parametrize(("kind", "name"), _entries(*CONSTRAINED_KINDS))
def test_parameter_constraints_name_real_parameters_and_allow_the_defaults(kind: str, name: str) -> None:
    cls = ts.get(kind, name)
    params = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    table = cls.all_parameter_constraints()
    assert table, f"{cls.__name__} declares no parameter_constraints"
    assert not set(table) - set(params), f"{cls.__name__}: constraints on unknown parameters {sorted(set(table) - set(params))}"
    for param, constraints in table.items():
        assert constraints and all(c is None or isinstance(c, Constraint) for c in constraints), param
        default = params[param]
        assert any(default is None if c is None else c.allows(default) for c in constraints), (
            f"{cls.__name__}.{param}: the default {default!r} breaks its own constraints")
    cls().validate_params()


@pytest.mark.parametrize(("kind", "name"), _entries(*CONSTRAINED_KINDS))
def test_a_bad_parameter_fails_before_any_work_naming_it(kind: str, name: str) -> None:
    """Every constraint is enforced at the entry point (scan / fit / apply / run), with one
    message format, before the model runs."""
    cls = ts.get(kind, name)
    for param, constraints in cls.all_parameter_constraints().items():
        bad = [v for c in constraints if c is not None for v in _invalid_values(c)
               if v is not None and not any(k is not None and k.allows(v) for k in constraints)]
        assert bad, f"{cls.__name__}.{param}: no value breaks its constraints"
        for value in bad:
            with pytest.raises(ts.InputError, match=rf"^{name}: {param} must be .*, got "):
                _run_entry(kind, cls(**{param: value}))


def test_scan_model_checks_every_method_before_running_any(backdoor: dict[str, Any]) -> None:
    """A bad value for the second method fails before the first (minutes long) starts, with
    the method named once."""
    from trojanscope import scan_model

    events: list[dict[str, Any]] = []
    few = backdoor["train"].clean_subset(3, seed=0)
    with pytest.raises(ts.InputError, match=r"^bias_maps: eps must be a number in \(0, 1\], got 5.0$"):
        scan_model(backdoor["backdoored"], few, ["neural_cleanse", "bias_maps"],
                   params={"bias_maps": {"eps": 5.0}}, progress=events.append)
    assert not [e for e in events if e.get("stage") == "method"]


def test_guard_checks_every_detector_before_fitting_any(backdoor: dict[str, Any]) -> None:
    from trojanscope.guard import Guard

    events: list[dict[str, Any]] = []
    with pytest.raises(ts.InputError, match=r"^lid: k must be an int >= 1, got 0$"):
        Guard(backdoor["backdoored"], {"kde": {}, "lid": {"k": 0}}).fit(
            backdoor["train"].clean_subset(3, seed=0), progress=events.append)
    assert not events


def test_build_mitigation_checks_its_values_and_its_scans() -> None:
    from trojanscope.workflows import build_mitigation

    with pytest.raises(ts.InputError, match=r"^unlearn: lr must be a number > 0, got 0$"):
        build_mitigation("unlearn", {"lr": 0})
    with pytest.raises(ts.InputError, match=r"^neural_cleanse: epochs must be an int >= 1, got 0$"):
        build_mitigation("prune", {"scan_params": {"epochs": 0}})
    with pytest.raises(ts.InputError, match="no parameter 'nope'"):
        build_mitigation("prune", {"scan_params": {"nope": 1}})


def test_demo_settings_meet_the_constraints() -> None:
    from trojanscope.demo import demo_instance

    for kind in METHOD_KINDS:
        for name in ts.available(kind):
            inst = demo_instance(kind, name)
            if inst is not None:
                inst.validate_params()


def test_constraint_vocabulary() -> None:
    nn_int = Interval(int, 1, None)
    assert nn_int.describe() == "an int >= 1"
    assert nn_int.allows(1) and nn_int.allows(np.int64(3))
    assert not any(nn_int.allows(v) for v in (0, 2.0, True, "2", None))
    frac = Interval(float, 0, 1, closed="right")
    assert frac.describe() == "a number in (0, 1]"
    assert frac.allows(1) and frac.allows(0.5) and not any(frac.allows(v) for v in (0, 1.01, float("nan")))
    assert Interval(float, 0, None, closed="neither").describe() == "a number > 0"
    assert Interval(float, None, 1, closed="neither").describe() == "a number < 1"
    assert Interval(float, None, None).allows(-3.5) and not Interval(float, None, None).allows(float("inf"))
    opt = Options(("I", "II"), normalize=lambda v: str(v).upper())
    assert opt.allows("ii") and not opt.allows("III") and opt.describe() == "one of 'I', 'II'"
    assert not Options((1, 2)).allows(True) and not Options((1, 2)).allows(1.0)
    assert Boolean().allows(False) and not Boolean().allows(0)
    assert InstanceOf(str, what="a path").describe() == "a path" and not InstanceOf(str).allows(3)
    unbounded = Interval(float, 0, None, closed="neither", allow_inf=True)
    assert unbounded.allows(float("inf")) and not unbounded.allows(float("-inf")) and not unbounded.allows(0)
    assert unbounded.describe() == "a number > 0 or inf"
    with pytest.raises(TypeError):
        Interval(int, 0, None, allow_inf=True)
    img = FilePath((".png", ".npy"), what="an image file")
    assert img.allows("a/b.PNG") and img.allows(Path("x.npy")) and not any(
        img.allows(v) for v in ("noise", "x.txt", 3, None))
    pos = Pair(Interval(int, 0, None), what="a (row, col) pair")
    assert pos.allows((2, 3)) and pos.allows([0, np.int64(1)])
    assert not any(pos.allows(v) for v in ((1,), (1, 2, 3), (1, -1), (1.5, 2), "2,3", (True, 1)))
    assert pos.describe() == "a (row, col) pair, each an int >= 0"
    # the short forms `trojanscope list` prints
    assert describe_briefly([Interval(float, 0, None, closed="neither")]) == "> 0"
    assert describe_briefly([Interval(int, 1, None), None]) == "int >= 1 or None"
    assert describe_briefly([Options(("A", "U", "P"))]) == "one of A, U, P"
    assert describe_briefly([Boolean()]) == "true/false"

    class Toy(Configurable):
        parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {"k": [nn_int, None]}

        def __init__(self, *, k: int | None = 1) -> None:
            self.k = k

    Toy(k=None).validate_params()
    with pytest.raises(ts.InputError, match=r"^Toy: k must be an int >= 1 or None, got 0$"):
        Toy(k=0).validate_params()

    class Sub(Toy):  # a subclass adds to the constraints of its bases
        parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {"j": [Boolean()]}

        def __init__(self, *, k: int | None = 1, j: bool = True) -> None:
            self.k, self.j = k, j

    assert set(Sub.all_parameter_constraints()) == {"k", "j"}
    with pytest.raises(ts.InputError, match="Sub: k must be"):
        Sub(k=-1).validate_params()


# --- evasion attacks ----------------------------------------------------------------------

_CHEAP = {"steps": 5, "binary_search_steps": 2}


@pytest.mark.parametrize(("kind", "name"), _entries("evasion"))
def test_evasion_attack_runs(kind: str, name: str, backdoor: dict[str, Any]) -> None:
    cls = ts.get(kind, name)
    defaults = cls().get_params()
    attack = cls(**{k: v for k, v in _CHEAP.items() if k in defaults})
    model = backdoor["clean"]
    data = backdoor["test"]
    x, y = data.x[:24], data.y[:24]
    snap = state_snapshot(model)
    grads = [p.grad for p in model.parameters()]
    x_adv = attack.run(model, x, y)
    assert_unchanged(model, snap)
    assert [p.grad for p in model.parameters()] == grads
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    delta = (x_adv - x).flatten(1)
    eps = defaults.get("eps")
    if eps is not None:
        norm = delta.norm(dim=1) if defaults.get("norm") == "l2" else delta.abs().amax(1)
        assert float(norm.max()) <= eps + 1e-5
    with torch.no_grad():
        before = (model(x).argmax(1) == y).float().mean()
        after = (model(x_adv).argmax(1) == y).float().mean()
    assert after < before, f"{name} did not lower the accuracy ({before:.2f} -> {after:.2f})"
    with pytest.raises(ts.InputError):
        attack.run(model, torch.full_like(x, float("nan")), y)


# --- mitigations --------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), _entries("mitigation"))
def test_mitigation_refuses_bad_input(kind: str, name: str, backdoor: dict[str, Any]) -> None:
    mit = ts.create(kind, name)
    model = backdoor["backdoored"]
    snap = state_snapshot(model)
    clean = backdoor["train"].clean_subset(5, seed=0)
    with pytest.raises(ts.InputError):
        mit.apply(model, (torch.full_like(clean.x, float("nan")), clean.y))
    with pytest.raises(ts.InputError):
        mit.apply(model, (clean.x[:, :, :8, :8], clean.y))
    with pytest.raises(ts.InputError):
        mit.apply(model, (clean.x, clean.y + 10))
    assert_unchanged(model, snap)


# --- architectures ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), _entries("arch"))
def test_architecture_convention(kind: str, name: str) -> None:
    from trojanscope.models import create_model, penultimate

    build = ts.get(kind, name)
    in_shape = inspect.signature(build).parameters["in_shape"].default
    torch.manual_seed(0)
    net = create_model(name, num_classes=7, in_shape=in_shape)
    assert net.arch == name
    assert isinstance(net.features, nn.Module)
    assert isinstance(net.classifier, nn.Sequential) and isinstance(net.classifier[-1], nn.Linear)
    assert net.classifier[-1].out_features == 7
    net.eval()
    x = torch.rand(2, *in_shape)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    feats = penultimate(net, x)
    assert feats.shape == (2, net.classifier[-1].in_features)
    with pytest.raises(ts.InputError):
        create_model(name, num_classes=1, in_shape=in_shape)
    with pytest.raises(ts.InputError):
        create_model(name, num_classes=7, in_shape=(in_shape[0], 2, 2))


# --- datasets -----------------------------------------------------------------------------


def _pixels(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_idx(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray) -> None:
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(x), x.shape[1], x.shape[2]) + x.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes())


def _mnist_like(name: str) -> Callable[[Path], tuple[dict[str, Any], np.ndarray, np.ndarray]]:
    def write(tmp: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        folder = tmp / name
        folder.mkdir()
        x, y = _pixels(6, (28, 28), 0), np.arange(6) % 10
        _write_idx(folder, "train", x, y)
        _write_idx(folder, "t10k", _pixels(3, (28, 28), 1), np.arange(3))
        return {"root": tmp}, x[:, None], y

    return write


def _cifar10(tmp: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    folder = tmp / "cifar10"
    folder.mkdir()
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _pixels(2, (3, 32, 32), i), np.array([i, (i + 3) % 10])
        rec = np.concatenate([y[:, None].astype(np.uint8), x.reshape(2, -1)], axis=1)
        (folder / f"data_batch_{i}.bin").write_bytes(rec.tobytes())
        xs.append(x)
        ys.append(y)
    return {"root": tmp}, np.concatenate(xs), np.concatenate(ys)


def _gtsrb(tmp: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    for c in (0, 5):
        cdir = tmp / "gtsrb" / "Final_Training" / "Images" / f"{c:05d}"
        cdir.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for j in range(2):
            x = _pixels(1, (32, 32, 3), 10 * c + j)[0]
            Image.fromarray(x).save(cdir / f"{j:05d}.ppm")
            rows.append(f"{j:05d}.ppm;32;32;0;0;31;31;{c}")
            xs.append(x.transpose(2, 0, 1))
            ys.append(c)
        (cdir / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    return {"root": tmp}, np.stack(xs), np.array(ys)


def _npz(tmp: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    x, y = _pixels(5, (1, 8, 8), 3), np.array([0, 1, 2, 1, 0])
    np.savez(tmp / "d.npz", x=x, y=y)
    return {"root": tmp / "d.npz"}, x, y


def _folder(tmp: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    for c, cname in enumerate(["cat", "dog"]):
        (tmp / "imgs" / cname).mkdir(parents=True)
        for j in range(2):
            x = _pixels(1, (8, 8, 3), 20 + 2 * c + j)[0]
            Image.fromarray(x).save(tmp / "imgs" / cname / f"{j}.png")
            xs.append(x.transpose(2, 0, 1))
            ys.append(c)
    return {"root": tmp / "imgs"}, np.stack(xs), np.array(ys)


def _digits(tmp: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    return None  # embedded: no files; checked below against scikit-learn itself


TINY: dict[str, Callable[[Path], Any]] = {
    "mnist": _mnist_like("mnist"),
    "fashion_mnist": _mnist_like("fashion_mnist"),
    "cifar10": _cifar10,
    "gtsrb": _gtsrb,
    "npz": _npz,
    "folder": _folder,
    "digits": _digits,
}


@pytest.mark.parametrize(("kind", "name"), _entries("dataset"))
def test_dataset_reads_its_own_format_exactly(kind: str, name: str, tmp_path: Path) -> None:
    assert name in TINY, f"add a tiny-file writer for dataset {name!r} to TINY in this test"
    load = ts.get(kind, name)
    written = TINY[name](tmp_path)
    if written is None:  # the embedded digits: compare with scikit-learn's copy
        from sklearn.datasets import load_digits

        d = load("all")
        ref = load_digits()
        assert len(d) == len(ref.target) and d.num_classes == 10
        got = sorted(map(tuple, (d.x.flatten(1) * 16).round().int().tolist()))
        assert got == sorted(map(tuple, ref.data.astype(int).tolist()))
        return
    kwargs, x, y = written
    d = load("train", **kwargs)
    assert isinstance(d, ts.ImageData)
    assert d.x.dtype == torch.float32 and d.x.ndim == 4 and d.y.dtype == torch.int64
    assert torch.equal(d.y, torch.as_tensor(y, dtype=torch.int64))
    assert torch.equal((d.x * 255).round().to(torch.uint8), torch.as_tensor(x))
    assert d.num_classes > int(d.y.max())


@pytest.mark.parametrize(("kind", "name"), _entries("dataset"))
def test_dataset_missing_files_say_where(kind: str, name: str, tmp_path: Path) -> None:
    if name == "digits":
        with pytest.raises(ts.InputError, match="split"):
            ts.get(kind, name)("no_such_split")
        return
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ts.DataNotFoundError) as err:
        ts.get(kind, name)("train", root=empty)
    assert str(empty) in str(err.value)


# --- model formats ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), _entries("format"))
def test_format_round_trip(kind: str, name: str, tmp_path: Path) -> None:
    from trojanscope.models import create_model, load_model, save_model

    fmt = ts.get(kind, name)
    suffix = next(iter(getattr(fmt, "suffixes", ()) or ()), None)
    if suffix is None or not getattr(fmt, "can_save", True):
        pytest.skip(f"{name} does not write files")
    torch.manual_seed(0)
    net = create_model("small_cnn", 10, (1, 8, 8)).eval()
    path = tmp_path / f"m{suffix}"
    save_model(net, path)
    back = load_model(path, arch="small_cnn", num_classes=10, in_shape=(1, 8, 8))
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), rtol=1e-4, atol=1e-5)
