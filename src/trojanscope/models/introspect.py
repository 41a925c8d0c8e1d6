"""Find layers and record activations of a model (through any wrapper around it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError


def named_layers(model: nn.Module, kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer of the given types, in registration (= forward) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The output layer: the last ``nn.Linear`` of the model."""
    layers = named_layers(model, (nn.Linear,))
    if not layers:
        raise InputError(
            "this method needs the model's layers, and this model has no nn.Linear output layer "
            "that trojanscope can see (torch.export, TorchScript and ONNX files hide their layers); "
            "use a safetensors or state-dict model file"
        )
    return layers[-1]  # type: ignore[return-value]


def record(model: nn.Module, x: torch.Tensor, modules: Sequence[nn.Module], *, inputs: bool = False,
           batch_size: int = 512) -> list[torch.Tensor]:
    """Run ``model`` on ``x`` and return the outputs (or inputs) of ``modules``, flattened to [N, D].

    Runs without gradients, in batches.
    """
    store: list[list[torch.Tensor]] = [[] for _ in modules]

    def hook(i: int):
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            t = inp[0] if inputs else out
            store[i].append(t.detach().flatten(1))
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                model(x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(s) for s in store]


def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """[N, D] input of the output layer (the "second-to-last layer" of Neural Cleanse, sec. VI)."""
    _, lin = last_linear(model)
    return record(model, x, [lin], inputs=True, batch_size=batch_size)[0]
