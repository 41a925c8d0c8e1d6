"""The wrapper every loaded model gets: [0, 1] input, logits output, safe mode switches.

DESIGN.md: normalisation (mean/std) belongs to the model, so a loaded model is wrapped to take
float NCHW images in [0, 1]; a model that outputs probabilities is wrapped with a log
(:mod:`trojanscope.models._logits`); ``train()`` / ``eval()`` never raise, even on a frozen
``torch.export`` module or an ONNX session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..utils import generator, model_device
from ._logits import LogOutput, looks_like_probabilities, set_mode


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; buffers, so they follow the model's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).flatten()
        std_t = torch.as_tensor(list(std), dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise InputError(f"mean and std need the same number of channels, got {mean_t.numel()} "
                             f"and {std_t.numel()}")
        if (std_t <= 0).any():
            raise InputError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t[None, :, None, None])
        self.register_buffer("std", std_t[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class WrappedModel(nn.Module):
    """A classifier taking [0, 1] images and returning logits, with what is known about it.

    Attributes:
        inner: the user's network (unnormalised input, as trained).
        normalize: ``Normalize`` or None when the network takes [0, 1] itself.
        num_classes, in_shape (C, H, W), arch (registry name or format), metadata (sidecar dict).
        forward_only: True when gradients cannot flow through the model (ONNX); gradient-based
            methods refuse such a model (:func:`require_gradients`).
    """

    def __init__(self, inner: nn.Module, *, normalize: Normalize | None = None, num_classes: int | None = None,
                 in_shape: tuple[int, int, int] | None = None, arch: str | None = None,
                 metadata: dict[str, Any] | None = None, forward_only: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.normalize = normalize
        self.num_classes = num_classes
        self.in_shape = tuple(in_shape) if in_shape is not None else None
        self.arch = arch
        self.metadata = dict(metadata or {})
        self.forward_only = forward_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        return self.inner(x)

    def train(self, mode: bool = True) -> WrappedModel:
        self.training = mode
        for child in self.children():
            set_mode(child, mode)
        return self

    @property
    def network(self) -> nn.Module:
        """The bare network (under any log wrapper), e.g. to reach ``features``/``classifier``.

        Note: it takes normalised input; call the wrapper itself for [0, 1] images.
        """
        net = self.inner
        return net.inner if isinstance(net, LogOutput) else net


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network of a :class:`WrappedModel` (the model itself otherwise)."""
    return model.network if isinstance(model, WrappedModel) else model


def require_gradients(model: nn.Module, method: str = "this method") -> None:
    """Raise a clear :class:`InputError` when ``model`` is forward-only (e.g. an ONNX file)."""
    if getattr(model, "forward_only", False):
        raise InputError(
            f"{method} needs gradients, but this model is forward-only (ONNX runs outside torch); "
            "use the model as .pt2, TorchScript .pt, .safetensors or a state dict, or a "
            "forward-only method (ULP, STRIP, noise-input)"
        )


def wrap_model(model: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               num_classes: int | None = None, in_shape: tuple[int, int, int] | None = None,
               arch: str | None = None, metadata: dict[str, Any] | None = None,
               forward_only: bool = False, detect_probabilities: bool = True,
               seed: int = 0) -> WrappedModel:
    """Wrap a network so that it takes [0, 1] input and returns logits.

    When ``in_shape`` is known, the model is run once on a few seeded uniform [0, 1] images: the
    output fixes ``num_classes`` when not given, and probability outputs (rows >= 0 summing to
    1) get a log wrapper.

    Args:
        model: the network, taking input normalised with ``mean``/``std`` (or [0, 1] when None).
        mean, std: per-channel normalisation (both or neither).
        num_classes, in_shape: what the network classifies; in_shape is (C, H, W).
        arch, metadata: recorded on the wrapper.
        forward_only: the network has no gradients (ONNX).
        detect_probabilities: probe the output to detect a softmax output.
        seed: seed of the probe images.
    """
    if isinstance(model, WrappedModel):
        return model
    if (mean is None) != (std is None):
        raise InputError("give both mean and std for normalisation, or neither")
    norm = Normalize(mean, std) if mean is not None and std is not None else None
    if norm is not None:
        norm.to(model_device(model))  # the buffers follow the network's device
    if norm is not None and in_shape is not None and norm.mean.shape[1] not in (1, in_shape[0]):
        raise InputError(f"mean/std have {norm.mean.shape[1]} channels but the model takes "
                         f"{in_shape[0]}-channel images")
    wrapped = WrappedModel(model, normalize=norm, num_classes=num_classes, in_shape=in_shape, arch=arch,
                           metadata=metadata, forward_only=forward_only)
    if in_shape is not None and (detect_probabilities or num_classes is None):
        out = _probe(wrapped, in_shape, seed)
        if num_classes is None:
            wrapped.num_classes = int(out.shape[1])
        elif out.shape[1] != num_classes:
            raise InputError(f"the model returns {out.shape[1]} outputs but {num_classes} classes were expected")
        if detect_probabilities and looks_like_probabilities(out):
            wrapped.inner = LogOutput(model)
            wrapped.metadata["outputs"] = "probabilities (wrapped with log)"
    return wrapped


@torch.no_grad()
def _probe(model: WrappedModel, in_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    x = torch.rand(4, *in_shape, generator=generator(seed)).to(model_device(model))
    was = model.training
    model.eval()
    try:
        out = model(x)
    except Exception as e:  # any failure of the user's network on a well-formed input
        raise InputError(f"the model fails on a batch of shape {tuple(x.shape)}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model should return [N, num_classes] logits, got {shape}")
    if not bool(torch.isfinite(out).all()):
        raise InputError("the model returns NaN or infinite outputs on uniform [0, 1] images; such a "
                         "model cannot be judged")
    return out.float()
