"""A model-independent view of one transformer block, and the block step that prunes inside it.

Adapters describe each block of their model family as a :class:`BlockView` (references to the
model's own modules, no copies); :func:`run_block` executes it with explicit attention so that the
probabilities are available for scoring, and removes or masks tokens right after the softmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.core.packing import gather_tokens, packing_index


@dataclass
class BlockView:
    """References to the sub-modules of one transformer block.

    ``pre_norm`` False is BERT's order (x = LN(x + Attn(x)); x = LN(x + MLP(x))); True is ViT's
    (x = x + Attn(LN(x)); x = x + MLP(LN(x))), with optional LayerScale modules.
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

    @property
    def hidden_size(self) -> int:
        return self.query.in_features

    @property
    def mlp_size(self) -> int:
        return self.mlp_in.out_features


def _drop(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if module is None else module(x)


def _attn_drop(block: BlockView, probs: torch.Tensor) -> torch.Tensor:
    if isinstance(block.attn_dropout, float):
        return F.dropout(probs, block.attn_dropout, training=block.query.training)
    return _drop(block.attn_dropout, probs)


def attention_probs(block: BlockView, h: torch.Tensor, key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention probabilities and values.

    h: [B, N, D] (already normalised for pre-norm blocks); key_mask: bool [B, N].
    Returns probs [B, H, N, N] (before dropout) and values [B, H, N, Dh].
    """
    batch, n, d = h.shape
    heads = block.num_heads
    head_dim = d // heads

    def split(x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, Dh]
        return x.view(batch, n, heads, head_dim).transpose(1, 2)

    q = split(block.query(h) * head_dim**-0.5)  # scaling q is cheaper than scaling [B, H, N, N]
    k, v = split(block.key(h)), split(block.value(h))
    logits = torch.matmul(q, k.transpose(-1, -2))  # [B, H, N, N]
    if not bool(key_mask.all()):  # dead or padded keys get no attention
        bias = torch.zeros(key_mask.shape, dtype=logits.dtype, device=logits.device)
        bias.masked_fill_(~key_mask, torch.finfo(logits.dtype).min)
        logits.add_(bias[:, None, None, :])
    return torch.softmax(logits, dim=-1), v


def finish_block(block: BlockView, x: torch.Tensor, h_probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rest of the block for the query rows in ``h_probs``.

    x: [B, M, D] residual input of those rows; h_probs: [B, H, M, N]; v: [B, H, N, Dh] -> [B, M, D].
    """
    batch, _, m, _ = h_probs.shape
    probs = _attn_drop(block, h_probs)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, m, -1)  # [B, M, D]
    attn = _drop(block.attn_out_dropout, block.attn_out(context))
    if block.pre_norm:
        if block.layer_scale_attn is not None:
            attn = block.layer_scale_attn(attn)
        x = x + _drop(block.residual_drop, attn)
        mlp = _drop(block.hidden_dropout, block.mlp_out(block.activation(block.mlp_in(block.norm_mlp(x)))))
        if block.layer_scale_mlp is not None:
            mlp = block.layer_scale_mlp(mlp)
        return x + _drop(block.residual_drop, mlp)
    x = block.norm_attn(x + attn)
    mlp = _drop(block.hidden_dropout, block.mlp_out(block.activation(block.mlp_in(x))))
    return block.norm_mlp(x + mlp)


@dataclass
class BlockResult:
    """Output of one block step."""

    hidden: torch.Tensor  # [B, M, D]
    alive: torch.Tensor  # bool [B, M]: live tokens of the output
    positions: torch.Tensor  # long [B, M]: original position of each output slot
    soft_keep: torch.Tensor | None  # [B, M] cumulative soft keep weight (soft stage only)
    n_in: torch.Tensor  # [B] live tokens that entered the block (soft: expected count)
    n_out: torch.Tensor  # [B] tokens kept after the block's decision (soft: expected count)


Decide = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def run_block(
    block: BlockView,
    x: torch.Tensor,
    alive: torch.Tensor,
    positions: torch.Tensor,
    decide: Decide | None,
    packed: bool,
    soft_keep: torch.Tensor | None = None,
) -> BlockResult:
    """One block with a pruning decision made right after the attention softmax.

    x: [B, N, D]; alive: bool [B, N]; positions: long [B, N].
    ``decide(probs, alive)`` returns a bool keep mask [B, N] (hard) or a float keep weight (soft);
    None means no pruning. ``packed`` removes dropped tokens; otherwise they stay, zeroed and masked
    out of later attention (the official LTP behaviour). Soft weights never remove tokens.
    """
    h = block.norm_attn(x) if block.pre_norm else x
    probs, v = attention_probs(block, h, alive)  # [B, H, N, N], [B, H, N, Dh]
    n_in = alive.sum(dim=1).to(x.dtype)
    keep = decide(probs, alive) if decide is not None else None

    if keep is None:
        out = finish_block(block, x, probs, v)
        return BlockResult(out, alive, positions, soft_keep, n_in, n_in)

    if keep.dtype != torch.bool:  # soft stage: scale outputs by the cumulative keep weight
        weight = keep * alive.to(keep.dtype) if soft_keep is None else keep * soft_keep
        out = finish_block(block, x, probs, v) * weight[..., None]
        n_soft_in = n_in if soft_keep is None else soft_keep.sum(dim=1)
        return BlockResult(out, alive, positions, weight, n_soft_in, weight.sum(dim=1))

    keep = keep & alive
    n_out = keep.sum(dim=1).to(x.dtype)
    if not packed:
        out = finish_block(block, x, probs, v) * keep[..., None].to(x.dtype)
        return BlockResult(out, keep, positions, None, n_in, n_out)

    index, packed_alive = packing_index(keep)  # [B, M]
    rows = gather_tokens(probs, index, dim=2)  # [B, H, M, N]: kept query rows only
    out = finish_block(block, gather_tokens(x, index), rows, v)  # [B, M, D]
    out = out * packed_alive[..., None].to(out.dtype)
    return BlockResult(out, packed_alive, gather_tokens(positions, index), None, n_in, n_out)
