"""Token merging and fusing as pure tensor functions (ToMe, EViT): no model imports.

A merge decision is a :class:`MergePlan` in the block's own token layout [B, N]: token ``i`` goes into
token ``into[i]`` (itself when it stays), and every surviving token becomes the ``weight``-weighted average
of the tokens that went into it. :func:`merge_tokens` applies a plan; packing the survivors (or masking the
others) is the engine's job, as for pruning.

- ToMe (Bolya et al., ICLR 2023), written from the paper: bipartite soft matching on the cosine
  similarity of the attention keys (mean over heads), ``r`` merges per layer, size-weighted averages,
  proportional attention (log size added to each key's logits).
- EViT (Liang et al., ICLR 2022): keep the top tokens by class attention; the inattentive rest is fused
  into one token, their class-attention-weighted average.

Prefix tokens ([CLS], DeiT's distillation token) are never merged: not as sources, not as destinations.
Dead tokens (padding, or pruned in masked execution) are never touched either, so padded batches work:
rows may then end with different token counts, which packing handles as for pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trimformer.core.packing import gather_tokens, packing_index
from trimformer.core.selection import keep_counts_from_rate, topk_mask

FUSE_MODES = ("average", "sum")


@dataclass
class MergePlan:
    """Where each token goes. Every tensor is in the input layout [B, N]."""

    keep: torch.Tensor  # bool [B, N]: tokens that survive (alone, or absorbing others)
    into: torch.Tensor  # long [B, N]: index of the token that absorbs token i (i itself if it stays)
    weight: torch.Tensor  # [B, N]: weight of token i in its destination's average
    normalize: bool = True  # False: a destination is sum(weight * x), not the weighted average
    macs: torch.Tensor | None = None  # [B] multiply-accumulates spent on the decision (ToMe's similarities)


def _prefix_mask(alive: torch.Tensor, num_prefix: int) -> torch.Tensor:
    prefix = torch.zeros_like(alive)
    prefix[:, :num_prefix] = True
    return prefix


def _identity(alive: torch.Tensor) -> torch.Tensor:
    batch, n = alive.shape
    return torch.arange(n, device=alive.device).expand(batch, n).clone()  # [B, N]


def merge_tokens(x: torch.Tensor, sizes: torch.Tensor, plan: MergePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan``: x [B, N, D], sizes [B, N] -> (merged x [B, N, D], merged sizes [B, N]).

    Destinations hold the weighted average of what went into them (the weighted sum when
    ``plan.normalize`` is False); tokens nothing merged into are returned bit-exact. The result is still in
    the input layout: slots with ``plan.keep`` False are to be dropped (or masked) by the caller. Sizes add.
    """
    into = plan.into
    weight = plan.weight.to(x.dtype)  # [B, N]
    index = into[..., None].expand_as(x)  # [B, N, D]
    summed = torch.zeros_like(x).scatter_add(1, index, x * weight[..., None])  # [B, N, D]
    new_sizes = torch.zeros_like(sizes).scatter_add(1, into, sizes)  # [B, N]
    if not plan.normalize:
        return summed, new_sizes
    total = torch.zeros_like(weight).scatter_add(1, into, weight)  # [B, N]
    count = torch.zeros_like(into).scatter_add(1, into, torch.ones_like(into))  # [B, N] tokens per slot
    average = summed / total.clamp_min(torch.finfo(x.dtype).tiny)[..., None]
    return torch.where((count > 1)[..., None], average, x), new_sizes


def proportional_attention_bias(sizes: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """ToMe's proportional attention as an additive key bias: log(size) for live keys, 0 for dead ones.

    softmax(q k^T / sqrt(d) + log s) makes a key of size s weigh as much as s copies of it. sizes,
    alive: [B, N] -> [B, N]. All sizes 1 gives a zero bias (plain attention).
    """
    safe = torch.where(alive, sizes, torch.ones_like(sizes))
    return torch.log(safe)


def bipartite_soft_matching(metric: torch.Tensor, r: int, alive: torch.Tensor, num_prefix: int,
                            weight: torch.Tensor | None = None) -> MergePlan:
    """ToMe's bipartite soft matching: merge up to ``r`` tokens of each row into their most similar partner.

    metric: [B, N, C] features to compare (ToMe: the attention keys averaged over heads); alive: bool [B, N];
    weight: [B, N] token sizes for the averages (ones when None). The live non-prefix tokens are split,
    alternating in order, into sets A and B; each A token is linked to its most cosine-similar B token, and
    the ``r`` most similar links are merged (at most half of a row's mergeable tokens, as in ToMe).
    """
    if r < 0:
        raise ValueError(f"r (tokens merged per layer) must be >= 0, got {r}")
    batch, n, channels = metric.shape
    mergeable = alive & ~_prefix_mask(alive, num_prefix)  # [B, N]
    order = mergeable.cumsum(dim=1) - 1  # rank among the mergeable tokens of the row
    a_index, a_live = packing_index(mergeable & (order % 2 == 0))  # [B, Na]
    b_index, b_live = packing_index(mergeable & (order % 2 == 1))  # [B, Nb]
    into = _identity(alive)
    weight = torch.ones(alive.shape, dtype=metric.dtype, device=metric.device) if weight is None else weight
    macs = (channels * a_live.sum(dim=1) * b_live.sum(dim=1)).to(metric.dtype)  # [B] the similarity matmul
    if r == 0 or a_index.shape[1] == 0 or b_index.shape[1] == 0:
        return MergePlan(keep=alive.clone(), into=into, weight=weight, macs=torch.zeros_like(macs))

    unit = F.normalize(metric, dim=-1)  # [B, N, C]
    scores = gather_tokens(unit, a_index) @ gather_tokens(unit, b_index).transpose(1, 2)  # [B, Na, Nb] cosine
    scores = scores.masked_fill(~b_live[:, None, :], float("-inf"))
    best, best_b = scores.max(dim=-1)  # [B, Na]: each A token's most similar B token
    best = best.masked_fill(~a_live, float("-inf"))
    ranks = best.sort(dim=1, descending=True, stable=True).indices.argsort(dim=1)  # [B, Na] rank of each edge
    r_row = torch.clamp(mergeable.sum(dim=1) // 2, max=r)  # [B]
    merged = (ranks < r_row[:, None]) & a_live & torch.isfinite(best)  # [B, Na]

    destination = b_index.gather(1, best_b)  # [B, Na] original index of each A token's match
    into.scatter_(1, a_index, torch.where(merged, destination, a_index))
    removed = torch.zeros_like(alive).scatter_(1, a_index, merged)  # [B, N]
    return MergePlan(keep=alive & ~removed, into=into, weight=weight, macs=macs)


def fuse_inattentive(scores: torch.Tensor, alive: torch.Tensor, num_prefix: int, keep_rate: float,
                     fuse: str = "average") -> MergePlan:
    """EViT: keep ceil(keep_rate * n) of the n live non-prefix tokens by ``scores``; fuse the rest into one.

    scores: [B, N] class attention (mean over heads); alive: bool [B, N]. The fused token is the
    score-weighted average of the dropped tokens (``fuse='sum'``: the unnormalised weighted sum of EViT's
    official code). It takes the slot of the dropped token with the highest score, so no new slot is needed;
    token order does not matter to attention. Nothing is fused when no token is dropped.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    if fuse not in FUSE_MODES:
        raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
    candidates = alive & ~_prefix_mask(alive, num_prefix)  # [B, N]
    counts = keep_counts_from_rate(candidates, keep_rate, minimum=0)  # [B]
    dropped = candidates & ~topk_mask(scores, candidates, counts)  # [B, N]
    host = scores.masked_fill(~dropped, float("-inf")).argmax(dim=1)  # [B] slot of the fused token
    has_fused = dropped.any(dim=1)  # [B]
    host_mask = torch.zeros_like(alive).scatter_(1, host[:, None], has_fused[:, None])  # [B, N]
    into = torch.where(dropped, host[:, None], _identity(alive))
    weight = torch.where(dropped, scores, torch.ones_like(scores))
    keep = (alive & ~dropped) | host_mask
    return MergePlan(keep=keep, into=into, weight=weight, normalize=fuse == "average")


def evit_layers(num_layers: int) -> list[int]:
    """EViT's default pruning layers, 0-indexed 3, 6, 9 of 12, scaled to other depths (duplicates dropped)."""
    return sorted({math.floor(k * num_layers / 4) for k in (1, 2, 3)})
