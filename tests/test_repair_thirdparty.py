"""Repair of models built the way other projects publish them (issue 19): a softmax head,
``(x - 0.5) / 0.5`` inside, BatchNorm and Dropout; shipped as ``.pt2`` (with a ``batch >= 2``
guard), TorchScript and a state dict. Every format is repaired, written, reloaded with any batch
size and re-checked; a broken budget is refused; feature-level input detectors read a .pt2's
activations through its graph."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import trojanscope as ts
from trojanscope.attacks import PatchTrigger, PoisoningAttack
from trojanscope.cli.main import app
from trojanscope.data import load_dataset
from trojanscope.demo import demo_instance
from trojanscope.metrics import accuracy, attack_success_rate
from trojanscope.models import load_model, named_layers, record, save_model

NET = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SoftmaxNet(nn.Module):
        """A third-party style MNIST net: normalisation inside, BN, dropout, softmax output."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 16, 3, padding=1)
            self.b2 = nn.BatchNorm2d(16)
            self.f1 = nn.Linear(16 * 4 * 4, 64)
            self.drop = nn.Dropout(0.3)
            self.f2 = nn.Linear(64, 10)

        def forward(self, x):
            x = (x - 0.5) / 0.5
            x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
            x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
            x = self.drop(F.relu(self.f1(x.view(x.size(0), -1))))
            return F.softmax(self.f2(x), dim=1)
''')
TARGET = 0
TRIGGER = PatchTrigger(size=3, location="bottom_right", margin=1)


@pytest.fixture(scope="module")
def thirdparty(tmp_path_factory):
    """The trained net in every format: {'pt2', 'ts', 'state', 'module', 'train', 'test'}."""
    d = tmp_path_factory.mktemp("thirdparty")
    (d / "net.py").write_text(NET)
    ns: dict = {}
    exec(compile(NET, str(d / "net.py"), "exec"), ns)
    tr, te = load_dataset("digits", "train", size=16), load_dataset("digits", "test", size=16)
    poisoned, _ = PoisoningAttack(trigger=TRIGGER, target=TARGET, rate=0.1, seed=0).poison_data(tr)
    torch.manual_seed(0)
    net = ns["SoftmaxNet"]()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):  # the usual recipe: NLL of log(softmax)
        net.train()
        perm = torch.randperm(len(poisoned), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.nll_loss(torch.log(net(poisoned.x[idx]) + 1e-12), poisoned.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    assert accuracy(net, te) > 0.9 and attack_success_rate(net, te, TRIGGER, TARGET)["asr"] > 0.9
    ex = torch.rand(4, 1, 16, 16)
    ep = torch.export.export(net, (ex,), dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=4096)},))
    torch.export.save(ep, str(d / "model.pt2"))
    torch.jit.save(torch.jit.trace(net, ex), str(d / "model_ts.pt"))
    torch.save(net.state_dict(), d / "model_state.pth")
    return {"pt2": d / "model.pt2", "ts": d / "model_ts.pt", "state": d / "model_state.pth",
            "module": f"{d / 'net.py'}:SoftmaxNet", "train": tr, "test": te, "dir": d}


def _load(tp, fmt):
    kw = {"in_shape": (1, 16, 16)}
    if fmt == "state":
        kw.update(module=tp["module"], num_classes=10)
    return load_model(tp[fmt], **kw)


def _scan():
    mask, pattern = TRIGGER.mask_pattern((1, 16, 16))
    return ts.ScanResult(method="given", backdoored=True, target=TARGET, trigger={"mask": mask, "pattern": pattern})


@pytest.mark.parametrize("fmt", ["pt2", "ts", "state"])
def test_unlearn_every_format_within_budget_and_reloads(thirdparty, fmt, tmp_path):
    model = _load(thirdparty, fmt)
    assert model.metadata.get("outputs", "").startswith("probabilities")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean = thirdparty["train"].clean_subset(60, seed=1)
    mit = ts.create("mitigation", "unlearn")
    res = mit.apply(model, clean, _scan(), test=thirdparty["test"], true_trigger=TRIGGER)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    assert res.verdict == "repaired", res.reason
    assert res.asr_true_before > 0.9 and res.asr_true_after < 0.1
    assert res.cta_before - res.cta_after <= 0.02
    # every output format loads back with any batch size and gives the same numbers
    for suffix in (".pt2", ".pt"):
        out = tmp_path / f"fixed{suffix}"
        save_model(res.model, out)
        back = load_model(out, in_shape=(1, 16, 16))
        for n in (1, 3, 7):
            assert back(thirdparty["test"].x[:n]).shape == (n, 10)
        again = mit._evaluate(back, thirdparty["test"], TARGET, {"asr": mit.reversed_trigger_, "asr_true": TRIGGER})
        assert again["cta"] == pytest.approx(res.cta_after, abs=0.003)
        assert again["asr_true"] == pytest.approx(res.asr_true_after, abs=0.003)
        # the written model keeps the publisher's softmax output
        p = back.network(thirdparty["test"].x[:5])
        assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-4)


def test_graph_layers_and_pruning_on_pt2(thirdparty):
    model = _load(thirdparty, "pt2")
    layers = named_layers(model)
    assert [type(m).__name__ for _, m in layers] == ["GraphLayer"] * 4
    convs = named_layers(model, (torch.nn.Conv2d,))
    assert [c.out_channels for _, c in convs] == [8, 16] and convs[-1][1].bn is not None
    x = thirdparty["test"].x[:9]
    acts = record(model, x, [m for _, m in layers])
    assert [a.shape[1] for a in acts] == [8 * 16 * 16, 16 * 8 * 8, 64, 10]
    # the last layer's output is the pre-softmax logits of the model
    assert torch.allclose(torch.softmax(acts[-1], 1), model(x).exp(), atol=1e-5)
    clean = thirdparty["train"].clean_subset(60, seed=1)
    res = ts.create("mitigation", "prune", layer="last_conv", step_fraction=0.1, max_cta_drop=0.2).apply(
        model, clean, _scan(), test=thirdparty["test"], true_trigger=TRIGGER)
    assert res.pruned
    _, conv = named_layers(res.model, (torch.nn.Conv2d,))[-1]
    out = record(res.model, x, [conv])[0].view(9, 16, -1)
    assert torch.all(out[:, res.pruned] == 0)  # conv + BatchNorm of the graph switched off


def test_filter_on_torchscript(thirdparty):
    model = _load(thirdparty, "ts")
    clean = thirdparty["train"].clean_subset(60, seed=1)
    res = ts.create("mitigation", "filter", fpr=0.05, max_cta_drop=0.1).apply(
        model, clean, _scan(), test=thirdparty["test"], true_trigger=TRIGGER)
    x = thirdparty["test"].of_classes([TARGET], exclude=True).x
    assert float(res.model.flags(TRIGGER.apply(x)).float().mean()) > 0.7
    assert float(res.model.flags(thirdparty["test"].x).float().mean()) < 0.15


def test_exported_in_training_mode_is_frozen(thirdparty, tmp_path):
    """A .pt2 exported without model.eval() has BatchNorm on batch statistics (overwriting its
    running statistics on every call) and live Dropout: loading sets them to inference (and says
    so), and the repair's copy of such a graph does too."""
    from trojanscope.mitigations._base import editable_copy
    from trojanscope.models.graph import freeze_modes

    ns: dict = {}
    exec(NET, ns)
    net = ns["SoftmaxNet"]()
    net.load_state_dict(torch.load(thirdparty["state"], weights_only=True))
    net.train()
    ep = torch.export.export(net, (torch.rand(4, 1, 16, 16),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(ep, str(tmp_path / "train_mode.pt2"))
    model = load_model(tmp_path / "train_mode.pt2", in_shape=(1, 16, 16))
    assert "batch_norm" in model.metadata["exported_in_training_mode"]
    x = thirdparty["test"].x[:8]
    net.eval()
    with torch.no_grad():
        want = net(x[:1])
        assert torch.allclose(model(x[:1]).exp(), want, atol=1e-5)  # batch of 1 is fine too
    raw = torch.export.load(str(tmp_path / "train_mode.pt2")).module()
    _, notes = editable_copy(raw, x)
    assert any("training mode" in n for n in notes)
    assert freeze_modes(raw)  # the copy was frozen, not the input (still in training mode)


def _cli_mitigate(tp, out, *extra):
    nc = demo_instance("model_detector", "neural_cleanse").get_params()
    scan_sets = [a for k, v in nc.items() if k in ("epochs", "steps_per_epoch", "batch_size", "patience",
                                                     "early_stop_patience", "init_cost")
                 for a in ("--scan-set", f"{k}={v}")]
    return CliRunner().invoke(app, ["mitigate", str(tp["pt2"]), "--data", "digits", "--method", "unlearn",
                                    "--attack", "badnets", "--target", str(TARGET), "--n-per-class", "60",
                                    "--out", str(out), *scan_sets, *extra])


def test_cli_refuses_a_repair_over_the_budget(thirdparty, tmp_path):
    """The budget violated on purpose (a learning rate that wrecks the model, even at /16):
    the command says why, writes nothing and exits 3."""
    out = tmp_path / "fixed.pt2"
    res = _cli_mitigate(thirdparty, out, "--set", "lr=20.0", "--set", "max_grad_norm=None",
                        "--set", "min_steps=30", "--max-cta-drop", "1")
    assert res.exit_code == 3, res.output
    assert "verdict: refused" in res.output and "more than the budget" in res.output
    assert "not written" in res.output and not out.exists()


def test_cli_writes_and_rechecks_a_repair(thirdparty, tmp_path):
    # stamping the true trigger (Table IV's comparison) isolates writing from the scan's quality
    out = tmp_path / "fixed.pt2"
    res = _cli_mitigate(thirdparty, out, "--set", "trigger_source=true", "--json", str(tmp_path / "m.json"))
    assert res.exit_code == 0, res.output
    assert "verdict: repaired" in res.output and "(reloaded: CTA" in res.output
    assert out.exists()
    back = load_model(out, in_shape=(1, 16, 16))
    assert attack_success_rate(back, thirdparty["test"], TRIGGER, TARGET)["asr"] < 0.1
    assert back(thirdparty["test"].x[:1]).shape == (1, 10)


@pytest.mark.parametrize("method", ["activation_space", "kde", "lid"])
def test_feature_input_detectors_on_pt2(thirdparty, tmp_path, method):
    """`trojanscope inputs` with the feature-level detectors reads the .pt2's activations."""
    te = thirdparty["test"]
    x = te.of_classes([TARGET], exclude=True).x[:40]
    suspect = torch.cat([te.x[:40], TRIGGER.apply(x)])
    np.savez(tmp_path / "s.npz", x=suspect.numpy())
    res = CliRunner().invoke(app, ["inputs", str(thirdparty["pt2"]), "--suspect", str(tmp_path / "s.npz"),
                                   "--data", "digits", "--method", method, "--n-clean", "30",
                                   "--json", str(tmp_path / "r.json")])
    assert res.exit_code in (0, 1), res.output
    import json

    r = json.loads((tmp_path / "r.json").read_text())["results"][0]
    scores = np.asarray(r["scores"], dtype=float)
    assert len(scores) == 80 and np.isfinite(scores).all()
    # the scores come from the graph's activations: triggered inputs rank above clean ones
    from trojanscope.metrics import roc_auc

    auc = roc_auc(scores[:40], scores[40:])
    assert auc > 0.6, (method, auc)
