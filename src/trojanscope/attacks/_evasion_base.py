"""The base class of evasion (adversarial-example) attacks; it owns the common steps.

``Attack(**params).run(model, x, y, targeted=False) -> x_adv`` (the shape of foolbox's and
torchattacks' APIs): the base validates the inputs, resolves the labels (true labels, the model's
predictions, or targets), freezes the model (eval mode, no parameter gradients, restored after:
the model and its ``.grad`` are never touched), wraps probability outputs with a log, follows the
model's device, and runs the attack in batches. Subclasses declare what their parameters may be
in ``parameter_constraints`` (checked first, before the model runs) and implement :meth:`_check`
(the parameters a batch needs, with checks that involve several of them) and :meth:`_run` (one
batch).
"""

from __future__ import annotations

from typing import Any, ClassVar, final

import torch
import torch.nn.functional as F
from torch import nn

from .._params import Configurable, Constraint, Interval
from .._runtime import frozen
from .._validate import check_images, check_labels, check_logits
from ..errors import InputError
from ..models._logits import ensure_logits
from ..utils import generator, model_device


def objective_grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool
                   ) -> torch.Tensor:
    """Gradient w.r.t. ``x`` of the objective to *increase*: the cross-entropy of the true label
    (untargeted), or minus the cross-entropy of the target (targeted). Per-sample gradients are
    independent because the loss is a sum over the batch.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        if not loss.requires_grad:
            raise InputError("this attack needs gradients but the model gives none (an ONNX "
                             "model?); use a PyTorch model file")
        (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad.detach()


def lp_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm [N] of a batch [N, ...]: "linf" or "l2"."""
    flat = v.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


class EvasionAttack(Configurable):
    """``Attack(**params).run(model, x, y, targeted=False) -> x_adv`` with ``x_adv`` in [0, 1].

    Subclasses keep their parameters keyword-only in ``__init__`` (stored under the same names, no
    logic there), including ``batch_size`` (and ``seed`` where they draw random numbers), and
    declare what each may be in ``parameter_constraints`` (``batch_size`` and ``seed`` are
    declared here).
    """

    parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {
        "batch_size": [Interval(int, 1, None)],
    }

    @final
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
            targeted: bool = False, *, target: int | torch.Tensor | None = None) -> torch.Tensor:
        """Craft adversarial examples.

        Args:
            model: a classifier taking [0, 1] NCHW input and returning logits (or probabilities).
            x: images [N, C, H, W] in [0, 1].
            y: labels [N]: the true labels (untargeted; None = the model's predictions), or the
                target labels when ``targeted`` is True.
            targeted: whether ``y`` holds targets.
            target: a target class (int) or one per sample ([N]); implies a targeted attack and
                takes precedence over ``y``. To attack every sample towards several targets in
                one batch, repeat the samples (``x.repeat_interleave(T, 0)``) with one target each.

        Returns:
            x_adv [N, C, H, W] in [0, 1], on the device of ``x``, detached.

        Raises:
            InputError: a parameter outside its ``parameter_constraints`` (before any work), a
                model that is not a module, images that are not NCHW in [0, 1], bad labels.
        """
        self.validate_params()
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x, "images to attack")
        p = self._check()
        bs = int(getattr(self, "batch_size", 256))
        dev, n = model_device(model), len(x)
        xd = x.detach().to(dev, torch.float32)
        with frozen(model):
            try:
                with torch.no_grad():
                    out = model(xd[: min(n, 32)])
            except RuntimeError as e:
                raise InputError(f"the model cannot process images of shape {tuple(x.shape[1:])}: "
                                 f"{str(e).splitlines()[0]}") from None
            check_logits(out, min(n, 32))
            k = int(out.shape[1])
            net = ensure_logits(model, xd)
            if target is not None:
                targeted = True
                t = torch.as_tensor(target)
                labels = t.expand(n).clone() if t.ndim == 0 else t
                labels = check_labels(labels, n, k, "targets")
            elif y is not None:
                labels = check_labels(torch.as_tensor(y), n, k, "targets" if targeted else "labels")
            elif targeted:
                raise InputError("a targeted attack needs the targets (y or target=)")
            else:
                with torch.no_grad():
                    labels = torch.cat([net(xd[i : i + bs]).argmax(1) for i in range(0, n, bs)])
            labels = labels.to(dev)
            g = generator(int(getattr(self, "seed", 0)), dev)
            parts = [self._run(net, xd[i : i + bs], labels[i : i + bs], bool(targeted), g, p)
                     for i in range(0, n, bs)]
        return torch.cat(parts).clamp_(0.0, 1.0).detach().to(x.device, x.dtype)

    def _check(self) -> dict[str, Any]:  # pragma: no cover
        """The parameters :meth:`_run` takes, after :meth:`validate_params` (raise InputError
        for a combination of values that does not work)."""
        raise NotImplementedError

    def _run(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
             g: torch.Generator, p: dict[str, Any]) -> torch.Tensor:  # pragma: no cover
        """Adversarial examples for one batch (model frozen; x on its device)."""
        raise NotImplementedError
