"""Find layers and record activations of a model (through any wrapper around it).

Eager models show their ``nn.Conv2d`` / ``nn.Linear`` modules; ``torch.export`` (.pt2) and
TorchScript models show their conv/linear graph nodes as :class:`~trojanscope.models.graph.GraphLayer`
objects (same ``weight`` / ``bias`` attributes), recorded through the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .graph import GraphLayer, model_graph_layers, record_graph


def named_layers(model: nn.Module, kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[tuple[str, Any]]:
    """(name, layer) of every layer of the given types, in registration (= forward) order: eager
    modules, then the conv/linear nodes of exported or scripted parts (:class:`GraphLayer`)."""
    eager = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    return eager + [(g.name, g) for g in model_graph_layers(model) if g.kind in kinds]


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The output layer: the last ``nn.Linear`` of the model."""
    layers = named_layers(model, (nn.Linear,))
    if not layers:
        raise InputError(
            "this method needs the model's layers, and this model has no linear output layer "
            "that trojanscope can see (ONNX files hide their layers); use a .pt2, TorchScript, "
            "safetensors or state-dict model file"
        )
    return layers[-1]  # type: ignore[return-value]


def record(model: nn.Module, x: torch.Tensor, modules: Sequence[Any], *, inputs: bool = False,
           batch_size: int = 512) -> list[torch.Tensor]:
    """Run ``model`` on ``x`` and return the outputs (or inputs) of ``modules``, flattened to [N, D].

    ``modules`` are eager modules (forward hooks) or :class:`GraphLayer` nodes (graph taps).
    Runs without gradients, in batches.
    """
    graph = [i for i, m in enumerate(modules) if isinstance(m, GraphLayer)]
    if graph:
        eager = [i for i in range(len(modules)) if i not in graph]
        res: list[torch.Tensor | None] = [None] * len(modules)
        for i, t in zip(graph, record_graph(model, x, [modules[i] for i in graph], inputs=inputs,
                                            batch_size=batch_size), strict=True):
            res[i] = t
        if eager:
            for i, t in zip(eager, record(model, x, [modules[i] for i in eager], inputs=inputs,
                                          batch_size=batch_size), strict=True):
                res[i] = t
        return res  # type: ignore[return-value]
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
