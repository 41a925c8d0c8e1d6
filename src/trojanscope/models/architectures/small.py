"""The small convolutional networks: ``small_cnn``, ``borji_cnn``, ``lenet5``, ``vgg_small``,
``nc_gtsrb``. Every builder takes ``num_classes`` and ``in_shape`` (C, H, W)."""

from __future__ import annotations

from torch import nn

from ..._registry import register
from ._base import ConvNet, _check


@register("arch", "small_cnn")
def small_cnn(num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 16, 16)) -> ConvNet:
    """A tiny 2-conv CNN for tests and the digits demo (trains in seconds on a CPU)."""
    c, h, w = _check(num_classes, in_shape)
    feats = nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )
    return ConvNet(feats, [64], num_classes, (c, h, w))


@register("arch", "borji_cnn")
def borji_cnn(num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 28, 28)) -> ConvNet:
    """conv20-conv50-fc500: the MNIST CNN of Borji, "Adversarial examples are useful too!", Fig. 23.

    conv 5x5x20 -> maxpool 2 -> conv 5x5x50 -> maxpool 2 -> fc 500 -> fc num_classes (ReLU after
    each hidden layer).
    """
    c, h, w = _check(num_classes, in_shape, min_side=12)
    feats = nn.Sequential(
        nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
    )
    return ConvNet(feats, [500], num_classes, (c, h, w))


@register("arch", "lenet5")
def lenet5(num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 28, 28)) -> ConvNet:
    """LeNet-5 (LeCun et al. 1998): conv6 -> pool -> conv16 -> pool -> fc120 -> fc84 -> out."""
    c, h, w = _check(num_classes, in_shape, min_side=12)
    feats = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    )
    return ConvNet(feats, [120, 84], num_classes, (c, h, w))


@register("arch", "vgg_small")
def vgg_small(num_classes: int = 10, in_shape: tuple[int, int, int] = (1, 28, 28)) -> ConvNet:
    """"VGG-9" for Fashion-MNIST: L-RED (Xiang et al. 2020), appendix A.7.

    VGG-11 (Simonyan & Zisserman 2015) with its last two convolutional layers removed and 16, 32,
    64, 64, 128, 128 filters in the six remaining ones: 6 conv (3x3, batch-norm, ReLU) + 3 dense
    layers = 9 layers. The paper gives no dense widths; VGG's 4096 are scaled down to 256 like the
    filters.
    """
    c, h, w = _check(num_classes, in_shape, min_side=16)
    cfg: list[int | str] = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M"]
    layers: list[nn.Module] = []
    ch = c
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            ch = int(v)
    return ConvNet(nn.Sequential(*layers), [256, 256], num_classes, (c, h, w), dropout=0.5)


@register("arch", "nc_gtsrb")
def nc_gtsrb(num_classes: int = 43, in_shape: tuple[int, int, int] = (3, 32, 32)) -> ConvNet:
    """The traffic-sign CNN of Neural Cleanse (Wang et al. 2019, Table VI): 6 conv + 2 dense.

    conv32-conv32-pool-conv64-conv64-pool-conv128-conv128-pool-fc512-fc(num_classes), 3x3
    convolutions with ReLU; L-RED (appendix A.7) uses the same network for GTSRB.
    """
    c, h, w = _check(num_classes, in_shape, min_side=8)
    layers: list[nn.Module] = []
    ch = c
    for v in (32, 64, 128):
        layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU(), nn.Conv2d(v, v, 3, padding=1), nn.ReLU(),
                   nn.MaxPool2d(2)]
        ch = v
    return ConvNet(nn.Sequential(*layers), [512], num_classes, (c, h, w), dropout=0.5)
