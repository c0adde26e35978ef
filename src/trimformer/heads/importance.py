"""Importance of attention heads and MLP channels, LayerNorm-free: measured on each unit's contribution to its
block's output before the residual sum and the LayerNorm, on a few calibration batches.

``norm``: the mean over real tokens of the L2 norm of the unit's contribution (a head: its context through its
columns of the output projection; an MLP channel: |activation| x the norm of its column of the second projection).
``taylor``: |d loss / d g| for a gate g = 1 on each unit's input to the output projection, summed over batches (the
first-order estimate of the loss change when the unit is removed, as in Michel et al. 2019 for heads).

Both run the bare transformers model (its own forward calls the output projections, where hooks read or gate the
inputs); the pure functions below do the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trimformer.heads.layers import LayerParts

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def head_contribution_norms(context: torch.Tensor, weight: torch.Tensor, heads: int) -> torch.Tensor:
    """L2 norm of each head's share of the output projection: context [B, N, H Dh], weight [D, H Dh] -> [B, N, H]."""
    batch, n, width = context.shape
    per_head = context.reshape(batch, n, heads, width // heads)  # [B, N, H, Dh]
    w = weight.reshape(weight.shape[0], heads, width // heads)  # [D, H, Dh]
    return torch.einsum("bnhk,dhk->bnhd", per_head, w).norm(dim=-1)  # [B, N, H]


def channel_contribution_norms(activation: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each MLP channel's share of the second projection: activation [B, N, F], weight [D, F] -> [B, N, F].
    """
    return activation.abs() * weight.norm(dim=0)


def token_mean(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens of values [B, N, U] (real: bool [B, N]) -> [U]."""
    weights = real.to(values.dtype)[..., None]  # [B, N, 1]
    return (values * weights).sum(dim=(0, 1)) / weights.sum().clamp_min(1.0)


@dataclass
class Scores:
    """Importance per layer: heads [H_l] and MLP channels [F_l] (float64), and the mean real length seen."""

    heads: list[torch.Tensor]
    channels: list[torch.Tensor]
    mean_length: float


def _inputs(batch: dict, device: torch.device, labels: bool) -> dict[str, torch.Tensor]:
    keys = MODEL_INPUTS + (("labels",) if labels else ())
    return {k: batch[k].to(device) for k in keys if batch.get(k) is not None}


def _real_tokens(inputs: dict[str, torch.Tensor], shape: torch.Size, device: torch.device) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    return torch.ones(shape, dtype=torch.bool, device=device) if mask is None else mask.bool()


def score_units(model: nn.Module, parts: list[LayerParts], batches: Iterable[dict], criterion: str) -> Scores:
    """Importance of every head and MLP channel of ``model`` (a bare transformers model) over ``batches``."""
    device = next(model.parameters()).device
    head_sum = [torch.zeros(p.view.num_heads, dtype=torch.float64, device=device) for p in parts]
    chan_sum = [torch.zeros(p.view.mlp_size, dtype=torch.float64, device=device) for p in parts]
    gates = [(torch.ones(p.view.num_heads, device=device, requires_grad=True),
              torch.ones(p.view.mlp_size, device=device, requires_grad=True)) for p in parts]
    taylor = criterion == "taylor"
    current: dict[str, Any] = {}  # this batch's inputs and real-token mask (local to this call)
    tokens: list[float] = []  # mean real length of each batch

    def head_hook(layer: int):
        part = parts[layer]

        def hook(module: nn.Module, args: tuple) -> tuple | None:
            context = args[0]  # [B, N, H Dh]
            if "real" not in current:
                current["real"] = _real_tokens(current["inputs"], context.shape[:2], device)  # [B, N]
            real = current["real"]
            if taylor:
                return (context * gates[layer][0].repeat_interleave(part.head_dim),)
            with torch.no_grad():
                norms = head_contribution_norms(context, module.weight, part.view.num_heads)  # [B, N, H]
                head_sum[layer] += token_mean(norms, real).double()
            return None
        return hook

    def mlp_hook(layer: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            activation = args[0]  # [B, N, F]
            if taylor:
                return (activation * gates[layer][1],)
            with torch.no_grad():
                norms = channel_contribution_norms(activation, module.weight)  # [B, N, F]
                chan_sum[layer] += token_mean(norms, current["real"]).double()
            return None
        return hook

    handles = [h for i, p in enumerate(parts) for h in (p.view.attn_out.register_forward_pre_hook(head_hook(i)),
                                                         p.view.mlp_out.register_forward_pre_hook(mlp_hook(i)))]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            current.clear()
            current["inputs"] = inputs = _inputs(batch, device, labels=taylor)
            if taylor:
                if "labels" not in inputs:
                    raise ValueError("criterion='taylor' needs labelled calibration batches (a 'labels' entry); "
                                     "use criterion='norm' for unlabelled data")
                loss = getattr(model(**inputs), "loss", None)
                if loss is None:
                    raise ValueError(f"criterion='taylor' needs a model that returns a loss; {type(model).__name__} "
                                     "returns none: use criterion='norm' or a *ForSequence/ImageClassification model")
                flat = [g for pair in gates for g in pair]
                grads = torch.autograd.grad(loss, flat)
                for i in range(len(parts)):
                    head_sum[i] += grads[2 * i].abs().double()
                    chan_sum[i] += grads[2 * i + 1].abs().double()
            else:
                with torch.no_grad():
                    model(**inputs)
            real = current["real"]  # set by the first block's hook
            tokens.append(float(real.sum()) / real.shape[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not tokens:
        raise ValueError("head pruning needs at least one calibration batch")
    return Scores(head_sum, chan_sum, sum(tokens) / len(tokens))

