"""Diagonal Fisher weights of a reconstruction unit's output (BRECQ, Li et al. 2021).

The float model's task loss L is the cross-entropy of its logits against the batch's ``labels`` when a mapping
batch carries them (the loss the Fisher information is defined on), else against its own argmax predictions
(the label-free stand-in: equal to the labels wherever the float model is right, and what the unlabelled
calibration sets of the pipeline and the CLI give). For a unit with float output z, g = dL/dz comes from one
forward and one backward per calibration batch; the unit's reconstruction loss then weights each squared output
error by g^2 (see :func:`fisher_weights`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[[nn.Module, Any], Any]


def first_tensor(out: Any) -> torch.Tensor:
    """The main tensor of a module output (a tensor, the first of a tuple, ``logits`` / first of a mapping)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return first_tensor(out[_main_key(out)])
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    raise ValueError(f"cannot find the output tensor of a {type(out).__name__}")


def _main_key(out: Mapping) -> Any:
    return "logits" if "logits" in out else next(iter(out))


def replace_first(out: Any, new: torch.Tensor) -> Any:
    """``out`` with the tensor :func:`first_tensor` finds replaced by ``new`` (containers copied, not changed)."""
    if isinstance(out, torch.Tensor):
        return new
    if isinstance(out, Mapping):
        copied = copy.copy(out)  # dict, OrderedDict, transformers' ModelOutput: same type, same keys
        key = _main_key(out)
        copied[key] = replace_first(out[key], new)
        return copied
    if isinstance(out, (tuple, list)) and out:
        return type(out)([replace_first(out[0], new), *out[1:]])
    raise ValueError(f"cannot find the output tensor of a {type(out).__name__}")


def task_loss(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """Summed cross-entropy of ``logits`` ([..., classes]) against the batch's ``labels`` (mapping batches;
    -100 ignored) or, without them, against the logits' own argmax. Summed, so that the gradient at a sample's
    activations is that sample's own, whatever the batch size."""
    if logits.ndim < 2 or logits.shape[-1] < 2:
        raise ValueError(f"recon_loss='fisher' needs classification logits [..., classes >= 2] from the model, got "
                         f"shape {tuple(logits.shape)}: use recon_loss='mse' for this model")
    flat = logits.float().reshape(-1, logits.shape[-1])
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if labels is None:
        labels = flat.detach().argmax(-1)
    elif not isinstance(labels, torch.Tensor) or labels.numel() != flat.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"recon_loss='fisher': the batch's labels {shape} do not match the logits "
                         f"{tuple(logits.shape)} (one class index per logit row expected)")
    return F.cross_entropy(flat, labels.reshape(-1).to(flat.device).long(), reduction="sum")


@torch.enable_grad()
def capture_with_fisher(model: nn.Module, unit: nn.Module, batches: list[Any],
                        fwd: Forward) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per batch, ``unit``'s output tensor (first call) and its squared task-loss gradient g^2, from one full
    forward and one backward of ``model`` as it is (the caller puts it in float mode). Only dL/dz is computed:
    no parameter receives a gradient."""
    outputs: list[torch.Tensor] = []
    squared: list[torch.Tensor] = []
    held: list[torch.Tensor] = []

    def post(mod: nn.Module, args: tuple, out: Any) -> Any:
        if held:  # a unit called twice: its first output is the one reconstructed
            return None
        z = first_tensor(out).detach().requires_grad_()
        held.append(z)
        return replace_first(out, z.clone())  # the rest of the forward may work in place (ReLU(inplace=True))

    handle = unit.register_forward_hook(post)
    try:
        for batch in batches:
            held.clear()
            loss = task_loss(first_tensor(fwd(model, batch)), batch)
            if not held:
                raise ValueError("a calibration batch never reached a reconstruction unit")
            z = held[0]
            (grad,) = torch.autograd.grad(loss, [z], allow_unused=True)
            outputs.append(z.detach())
            squared.append(torch.zeros_like(z) if grad is None else grad.detach().pow(2))
    finally:
        handle.remove()
    return outputs, squared


def fisher_weights(squared: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """g^2 divided by its mean over all cached elements (in place), so that the weights average 1 and the
    weighted loss has the scale of the plain one (the learning rates keep their meaning; g = const gives exactly
    the unweighted loss). None when every gradient is zero (the unit does not reach the loss, or the float
    model is certain of every sample): the caller falls back to the unweighted loss."""
    total = sum(float(s.double().sum()) for s in squared)
    count = sum(s.numel() for s in squared)
    if not count or not total > 0 or total == float("inf"):
        return None
    mean = total / count
    return [s.div_(mean) for s in squared]
