"""Layer access for models whose layers are not ``nn.Module`` objects: ``torch.export`` programs
(``.pt2``, an FX graph after ``.module()``) and TorchScript files (converted to an FX graph).

An eager model shows its ``nn.Conv2d`` / ``nn.Linear`` layers to forward hooks; an exported
graph only has call nodes (``aten.conv2d``, ``aten.linear``, ...) whose weights are ``get_attr``
tensors. :class:`GraphLayer` stands for such a node with the attributes the methods use
(``weight``, ``bias``, ``out_channels`` ...), and :func:`record_graph` reads the node's output
(or input) by running a copy of the graph with "taps" that share the original's weights.

TorchScript modules cannot be hooked or edited: :func:`script_to_graph` converts one to an FX
graph with ``torch._export.converter.TS2EPConverter`` (same outputs; weights become trainable
parameters).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

from ..errors import InputError

_CONV = {"aten.conv2d.default", "aten.convolution.default"}
_LINEAR = {"aten.linear.default", "aten.addmm.default"}
_BN = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default",
       "aten.native_batch_norm.default", "aten._native_batch_norm_legit.default"}
_SOFTMAX = {"aten.softmax.int", "aten._softmax.default"}
_DROPOUT = {"aten.dropout.default", "aten.native_dropout.default"}


def _op(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_function" else ""


def _get_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _attr_tensor(gm: fx.GraphModule, arg: Any) -> tuple[str, torch.Tensor] | None:
    """(target, tensor) when ``arg`` is a ``get_attr`` node (through a transpose for addmm)."""
    if isinstance(arg, fx.Node) and _op(arg) in ("aten.t.default", "aten.permute.default",
                                                 "aten.transpose.int"):
        arg = arg.args[0]
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        t = _get_attr(gm, str(arg.target))
        if isinstance(t, torch.Tensor):
            return str(arg.target), t
    return None


class GraphLayer:
    """A convolution or linear call node of an FX graph, seen like its eager module.

    Attributes:
        name: the node name; kind: ``nn.Conv2d`` or ``nn.Linear`` (the eager type it stands for).
        weight, bias: the graph's own tensors (``[out, in, kh, kw]`` / ``[out, in]``; editing them
            edits the model); bn: for a convolution directly followed by batch normalisation, its
            ``(weight, bias, running_mean)`` tensors (None otherwise).
        owner: the FX graph holding the node; source: the module of the user's model it stands
            for (the graph itself, or the TorchScript module it was converted from).
    """

    def __init__(self, name: str, kind: type, weight: torch.Tensor, bias: torch.Tensor | None,
                 owner: fx.GraphModule, source: nn.Module, bn: tuple | None = None) -> None:
        self.name, self.kind, self.weight, self.bias = name, kind, weight, bias
        self.owner, self.source, self.bn = owner, source, bn

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    out_features = out_channels

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def __repr__(self) -> str:
        return f"GraphLayer({self.name}, {self.kind.__name__}, weight={tuple(self.weight.shape)})"


def graph_layers(gm: fx.GraphModule, source: nn.Module | None = None) -> list[GraphLayer]:
    """Every conv/linear call node of ``gm`` with a weight tensor, in graph (= forward) order."""
    out: list[GraphLayer] = []
    for node in gm.graph.nodes:
        op = _op(node)
        if op in _CONV:
            if op == "aten.convolution.default" and len(node.args) > 6 and node.args[6]:
                continue  # transposed convolution
            w = _attr_tensor(gm, node.args[1])
            b = _attr_tensor(gm, node.args[2]) if len(node.args) > 2 else None
            if w is None or w[1].ndim != 4:
                continue
            bn = None
            users = list(node.users)
            if len(users) == 1 and _op(users[0]) in _BN:
                a = users[0].args
                parts = [_attr_tensor(gm, a[i]) if len(a) > i else None for i in (1, 2, 3)]
                if all(p is not None for p in parts):
                    bn = tuple(p[1] for p in parts)  # type: ignore[index]
            out.append(GraphLayer(node.name, nn.Conv2d, w[1], b[1] if b else None, gm, source or gm, bn))
        elif op == "aten.linear.default":
            w = _attr_tensor(gm, node.args[1])
            b = _attr_tensor(gm, node.args[2]) if len(node.args) > 2 else None
            if w is not None and w[1].ndim == 2:
                out.append(GraphLayer(node.name, nn.Linear, w[1], b[1] if b else None, gm, source or gm))
        elif op == "aten.addmm.default":  # decomposed linear: addmm(bias, x, t(weight))
            w = _attr_tensor(gm, node.args[2])
            b = _attr_tensor(gm, node.args[0])
            if w is not None and w[1].ndim == 2 and isinstance(node.args[2], fx.Node) and node.args[2].op != "get_attr":
                out.append(GraphLayer(node.name, nn.Linear, w[1], b[1] if b else None, gm, source or gm))
    return out


def _layer_input(node: fx.Node) -> fx.Node:
    return node.args[1] if _op(node) == "aten.addmm.default" else node.args[0]  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# TorchScript -> FX

_CONVERTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def script_to_graph(sm: nn.Module, in_shape: Sequence[int]) -> fx.GraphModule:
    """An FX graph computing what the TorchScript module ``sm`` computes, with its weights as
    trainable parameters (a copy: editing it leaves ``sm`` as it is). Cached per module."""
    cached = _CONVERTED.get(sm)
    if cached is not None:
        return cached
    from torch._export.converter import TS2EPConverter

    example = torch.rand(2, *in_shape, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            gm = TS2EPConverter(sm, (example,)).convert().module()
    except Exception as e:
        raise InputError(f"this TorchScript model could not be converted to a graph whose layers "
                         f"trojanscope can see ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                         "export it with torch.export (.pt2) or use a state dict") from None
    learnable = {n for n, _ in sm.named_parameters()}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and str(node.target) in learnable:
            _make_parameter(gm, str(node.target))
    with torch.no_grad():
        if not torch.allclose(gm(example), sm(example), atol=1e-5, rtol=1e-4):
            raise InputError("converting this TorchScript model to a graph changed its outputs; "
                             "export it with torch.export (.pt2) or use a state dict")
    _CONVERTED[sm] = gm
    return gm


def _make_parameter(gm: nn.Module, target: str) -> None:
    *path, leaf = target.split(".")
    parent = gm
    for p in path:
        parent = getattr(parent, p)
    t = getattr(parent, leaf)
    if isinstance(t, nn.Parameter):
        return
    if leaf in parent._buffers:
        del parent._buffers[leaf]
    elif hasattr(parent, leaf):
        delattr(parent, leaf)
    parent.register_parameter(leaf, nn.Parameter(t.detach().clone(), requires_grad=t.is_floating_point()))


def _in_shape_of(model: nn.Module) -> tuple[int, ...] | None:
    for m in model.modules():
        s = getattr(m, "in_shape", None)
        if s:
            return tuple(s)
    return None


def _is_script(m: nn.Module) -> bool:
    return isinstance(m, torch.jit.ScriptModule)


def _top_graphs(model: nn.Module) -> Iterator[tuple[nn.Module, fx.GraphModule]]:
    """(source, graph) of every outermost FX graph or TorchScript module inside ``model``."""
    skip: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(m, fx.GraphModule):
            skip.append(name)
            yield m, m
        elif _is_script(m):
            skip.append(name)
            shape = _in_shape_of(model)
            if shape is None:
                raise InputError("reading the layers of a TorchScript model needs its input shape "
                                 "(--in-shape or the sidecar's in_shape)")
            yield m, script_to_graph(m, shape)


def model_graph_layers(model: nn.Module) -> list[GraphLayer]:
    """The graph layers of every exported/scripted part of ``model`` (empty for eager models)."""
    out: list[GraphLayer] = []
    for source, gm in _top_graphs(model):
        out += graph_layers(gm, source)
    return out


# --------------------------------------------------------------------------------------------
# recording activations

_STORE: list[list[torch.Tensor]] = []


def _tap(i: int, t: torch.Tensor) -> None:
    _STORE[i].append(t.detach().flatten(1))


def _tapped(gm: fx.GraphModule, taps: list[tuple[int, str, bool]]) -> fx.GraphModule:
    """A copy of ``gm`` (sharing its tensors) that calls ``_tap(i, value)`` after each named node."""
    g = copy.deepcopy(gm.graph)
    nodes = {n.name: n for n in g.nodes}
    for i, name, inputs in taps:
        node = nodes[name]
        val = _layer_input(node) if inputs else node
        with g.inserting_after(node):
            g.call_function(_tap, (i, val))
    out = fx.GraphModule(gm, g)
    # keep the pytree in/out handling of an exported module
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            setattr(out, attr, getattr(gm, attr))
    return out


@contextlib.contextmanager
def swapped(model: nn.Module, source: nn.Module, replacement: nn.Module):
    """Put ``replacement`` where ``source`` sits inside ``model`` for the duration."""
    spots = [(parent, name) for parent in model.modules() for name, child in parent._modules.items()
             if child is source]
    if not spots:
        raise InputError("internal: the graph layer does not belong to this model")
    for parent, name in spots:
        parent._modules[name] = replacement
    try:
        yield
    finally:
        for parent, name in spots:
            parent._modules[name] = source


def record_graph(model: nn.Module, x: torch.Tensor, layers: Sequence[GraphLayer], *, inputs: bool = False,
                 batch_size: int = 512) -> list[torch.Tensor]:
    """Outputs (or inputs) of graph ``layers`` when ``model`` runs on ``x``, flattened to [N, D]."""
    global _STORE
    by_owner: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        by_owner.setdefault(id(layer.owner), []).append(i)
    store: list[list[torch.Tensor]] = [[] for _ in layers]
    with contextlib.ExitStack() as stack:
        run: nn.Module = model
        for idxs in by_owner.values():
            first = layers[idxs[0]]
            tapped = _tapped(first.owner, [(i, layers[i].name, inputs) for i in idxs])
            if first.source is model:
                run = tapped
            else:
                stack.enter_context(swapped(model, first.source, tapped))
        saved, _STORE = _STORE, store
        try:
            with torch.no_grad():
                for i in range(0, x.shape[0], batch_size):
                    run(x[i : i + batch_size])
        finally:
            _STORE = saved
    return [torch.cat(s) if s else torch.empty(0) for s in store]


# --------------------------------------------------------------------------------------------
# repairable copies


def strip_guards(gm: fx.GraphModule) -> None:
    """Remove the input-shape guard call of an exported module (e.g. ``batch >= 2`` from a
    ``Dim("batch", min=2)``), so that the graph can be exported again with any batch size.
    The computation itself does not depend on it."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.recompile()


def _dim(x: torch.Tensor, d: int) -> int:
    return x.size(d)


def _reshape(x: torch.Tensor, shape: list) -> torch.Tensor:
    return x.reshape(shape)


def trace_friendly(gm: fx.GraphModule) -> None:
    """Replace ``aten.sym_size`` by ``x.size(d)`` and ``aten.view``/``reshape`` by
    ``x.reshape``: ``torch.jit.trace`` records the Python-level calls as size reads, but bakes
    the aten calls' sizes in as the example's numbers (a TorchScript file saved from the graph
    would then take one batch size only)."""
    changed = False
    for node in gm.graph.nodes:
        op = _op(node)
        if op == "aten.sym_size.int":
            node.target = _dim
            changed = True
        elif op in ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default"):
            node.target = _reshape
            changed = True
    if changed:
        gm.recompile()


def freeze_modes(gm: fx.GraphModule) -> list[str]:
    """Set BatchNorm (training -> running statistics) and Dropout (-> identity) of a graph to
    inference behaviour; a graph exported in training mode would otherwise use batch statistics
    (and update its running statistics) on every call. Returns the changed node names."""
    changed: list[str] = []
    for node in gm.graph.nodes:
        op = _op(node)
        if op == "aten.batch_norm.default" and len(node.args) > 5 and node.args[5] is True:
            node.args = (*node.args[:5], False, *node.args[6:])
            changed.append(node.name)
        elif op == "aten.dropout.default" and len(node.args) > 2 and node.args[2] is True:
            node.args = (node.args[0], node.args[1], False)
            changed.append(node.name)
    if changed:
        gm.recompile()
    return changed


def logits_node(gm: fx.GraphModule) -> fx.Node | None:
    """The input of a softmax that is the graph's only output (None when the graph does not end in
    a softmax over dimension 1/-1)."""
    outs = [n for n in gm.graph.nodes if n.op == "output"]
    if len(outs) != 1:
        return None
    val = outs[0].args[0]
    if isinstance(val, (tuple, list)):
        if len(val) != 1:
            return None
        val = val[0]
    if isinstance(val, fx.Node) and _op(val) in _SOFTMAX and val.args[1] in (1, -1):
        return val.args[0]  # type: ignore[return-value]
    return None


def logits_view(gm: fx.GraphModule) -> fx.GraphModule | None:
    """A graph module returning the pre-softmax logits of ``gm`` (sharing its parameters, so
    training it trains ``gm``); None when ``gm`` does not end in a softmax."""
    node = logits_node(gm)
    if node is None:
        return None
    g = copy.deepcopy(gm.graph)
    name = node.name
    target = next(n for n in g.nodes if n.name == name)
    out = next(n for n in g.nodes if n.op == "output")
    out.args = ((target,),) if isinstance(out.args[0], (tuple, list)) else (target,)
    view = fx.GraphModule(gm, g)
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            setattr(view, attr, getattr(gm, attr))
    view.graph.eliminate_dead_code()
    view.recompile()
    return view
