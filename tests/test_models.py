"""Every registered architecture: forward/backward on 1- and 3-channel input, the
features/classifier convention, and clear errors for bad sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trojanscope import InputError, available
from trojanscope.models import create_model, last_linear, penultimate

ARCHS = available("arch")


def test_registry_has_the_documented_architectures():
    for name in ("small_cnn", "borji_cnn", "lenet5", "vgg_small", "nc_gtsrb", "resnet18", "resnet34",
                 "mobilenetv2", "densenet_small"):
        assert name in ARCHS


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_shape", [(1, 16, 16), (3, 16, 16)])
def test_forward_backward(arch, in_shape):
    torch.manual_seed(0)
    m = create_model(arch, 7, in_shape)
    assert m.arch == arch and m.num_classes == 7 and tuple(m.in_shape) == in_shape
    x = torch.rand(3, *in_shape)
    out = m(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    # convention: classifier is a Sequential ending in the output Linear; penultimate = its input
    assert isinstance(m.features, nn.Module)
    assert isinstance(m.classifier, nn.Sequential) and isinstance(m.classifier[-1], nn.Linear)
    assert last_linear(m)[1] is m.classifier[-1]
    m.eval()
    feats = penultimate(m, x)
    assert feats.shape == (3, m.classifier[-1].in_features)
    with torch.no_grad():
        torch.testing.assert_close(m.classifier[-1](feats), m(x), rtol=1e-4, atol=1e-5)


def test_cifar_shape_reaches_the_paper_sizes():
    # CIFAR variants keep a 4x4 map before pooling: ResNet-18 has 512 features, MobileNetV2 1280
    assert create_model("resnet18", 10, (3, 32, 32)).classifier[-1].in_features == 512
    assert create_model("mobilenetv2", 10, (3, 32, 32)).classifier[-1].in_features == 1280
    n = sum(p.numel() for p in create_model("resnet18", 10, (3, 32, 32)).parameters())
    assert 11.0e6 < n < 11.3e6  # 11.17M parameters, as in the CIFAR ResNet-18
    assert create_model("nc_gtsrb", 43, (3, 32, 32)).classifier[-1].out_features == 43


def test_paper_layer_counts():
    # L-RED A.7: VGG-9 = 6 conv (16, 32, 64, 64, 128, 128 filters) + 3 dense
    vgg = create_model("vgg_small", 10, (1, 28, 28))
    assert [m.out_channels for m in vgg.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 64, 64, 128, 128]
    assert sum(isinstance(m, nn.Linear) for m in vgg.modules()) == 3
    # Neural Cleanse's GTSRB net: conv 32, 32, 64, 64, 128, 128 + fc 512 + output
    nc = create_model("nc_gtsrb", 43, (3, 32, 32))
    assert [m.out_channels for m in nc.modules() if isinstance(m, nn.Conv2d)] == [32, 32, 64, 64, 128, 128]
    assert [m.out_features for m in nc.modules() if isinstance(m, nn.Linear)] == [512, 43]
    # Borji Fig. 23: conv20, conv50, fc 4*4*50 -> 500 -> 10
    borji = create_model("borji_cnn", 10, (1, 28, 28))
    assert [(m.in_features, m.out_features) for m in borji.modules() if isinstance(m, nn.Linear)] == [
        (800, 500), (500, 10)]


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_sizes(arch):
    with pytest.raises(InputError, match="num_classes"):
        create_model(arch, 1, (1, 28, 28))
    with pytest.raises(InputError, match="in_shape"):
        create_model(arch, 10, (28, 28))
    with pytest.raises(InputError, match="too small"):
        create_model(arch, 10, (1, 2, 2))


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(InputError, match="resnet18"):
        create_model("resnet1800", 10, (3, 32, 32))
