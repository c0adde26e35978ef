"""A model-independent view of one transformer block: references to the model's own modules, no copies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BlockView:
    """References to the sub-modules of one transformer block.

    ``pre_norm`` False is BERT's order (x = LN(x + Attn(x)); x = LN(x + MLP(x))); True is ViT's
    (x = x + Attn(LN(x)); x = x + MLP(LN(x))), with optional LayerScale modules.

    ``qkv``: a fused projection [B, N, D] -> [B, N, 3D] whose output is [q | k | v] along the last dimension
    (timm's ``attn.qkv``), or None where the model has three separate projections. When it is set, the engine
    computes queries, keys and values with it alone (one matmul; at inference over a cached copy of its weight
    with the query rows pre-scaled, packed for oneDNN where that applies), and ``query`` / ``key`` / ``value``
    are Linear-like views of its three output slices, kept for code that reads one projection (``hidden_size``,
    inspection, the per-projection path in tests): they must compute exactly what the slices of ``qkv`` do.
    """

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    mlp_in: nn.Linear
    mlp_out: nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    norm_attn: nn.Module
    norm_mlp: nn.Module
    num_heads: int
    pre_norm: bool = False
    attn_dropout: nn.Module | float | None = None  # a module, or a probability applied functionally
    hidden_dropout: nn.Module | None = None
    attn_out_dropout: nn.Module | None = None
    layer_scale_attn: nn.Module | None = None
    layer_scale_mlp: nn.Module | None = None
    residual_drop: nn.Module | None = None  # stochastic depth on each residual branch (pre-norm blocks)
    qkv: nn.Module | None = None  # a fused [q | k | v] projection that the engine runs instead of the three views

    @property
    def hidden_size(self) -> int:
        return self.query.in_features

    @property
    def training(self) -> bool:
        """Whether the attention projections that run (``qkv``, else ``query``) are in training mode."""
        return (self.query if self.qkv is None else self.qkv).training

    @property
    def mlp_size(self) -> int:
        return self.mlp_in.out_features

    @property
    def attn_width(self) -> int:
        """Heads x head size: the width of the queries, keys, values and attention context (the hidden size unless
        heads were pruned, :mod:`trimformer.heads`)."""
        return self.query.out_features

    @property
    def query_scale(self) -> float:
        """1/sqrt(head size), folded into the queries."""
        return (self.attn_width // self.num_heads) ** -0.5


def layer_widths(views: list[BlockView]) -> tuple[torch.Tensor | None, int | torch.Tensor]:
    """(attention width, MLP width) for the FLOPs formulas (:mod:`trimformer.core.flops`): ``(None, f)`` when
    every block has its full attention and one MLP width f (the dense formula), else float64 tensors [L]."""
    attn = [v.attn_width for v in views]
    mlp = [v.mlp_size for v in views]
    if all(a == v.hidden_size for a, v in zip(attn, views, strict=True)) and len(set(mlp)) == 1:
        return None, mlp[0]
    return torch.tensor(attn, dtype=torch.float64), torch.tensor(mlp, dtype=torch.float64)
