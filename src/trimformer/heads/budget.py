"""The budget search: one global threshold on normalised importance, found by bisection so that the encoder's FLOPs
meet the target.

Scores are normalised per layer and per kind (divided by the layer's mean head score, or mean channel score), so
that one threshold compares units across layers whose raw scales differ. A unit is kept when its normalised score is
at least the threshold; every layer keeps at least one head (see :func:`kept_counts`) and a multiple of
``mlp_multiple`` channels. FLOPs fall monotonically as the threshold rises, so bisection over the sorted scores finds
the lowest threshold whose structure meets the budget: the largest structure within it, one unit away from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trimformer.core.flops import layer_macs
from trimformer.heads.config import HeadPruningConfig
from trimformer.heads.importance import Scores


@dataclass(frozen=True)
class Plan:
    """What to keep: original head ids and MLP channel ids per layer, and the FLOPs share they cost."""

    heads: tuple[tuple[int, ...], ...]
    channels: tuple[tuple[int, ...], ...]
    flops_ratio: float  # encoder FLOPs of the plan / the model's, at ``length`` tokens
    threshold: float
    length: float


def normalised(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's scores divided by their mean (a layer of zeros stays zero)."""
    return [s / s.mean() if float(s.mean()) > 0 else torch.zeros_like(s) for s in scores]


def kept_counts(scores: torch.Tensor, threshold: float, minimum: int, multiple: int = 1) -> int:
    """Units of one layer kept at ``threshold``: those scoring at least it, rounded up to ``multiple``, at least
    ``minimum``, at most all.

    Decision: a layer keeps at least one head. A layer without heads would need a separate path in the engine
    and in transformers' forward (both reshape the context by the head count), and token-pruning methods read
    every layer's attention probabilities to score tokens (LTP, AS-ViT): with no head there is nothing to read.
    One head of d/H channels costs little against that.
    """
    count = int((scores >= threshold).sum())
    return min(scores.numel(), max(minimum, math.ceil(count / multiple) * multiple))


def structure_flops(d: int, widths: list[int], mlp_sizes: list[int], length: float) -> float:
    """Encoder FLOPs per sample of layers with these attention and MLP widths at ``length`` tokens."""
    pairs = zip(widths, mlp_sizes, strict=True)
    return 2.0 * sum(float(layer_macs(d, f, length, length, attn_width=a)) for a, f in pairs)


def plan_budget(scores: Scores, config: HeadPruningConfig, d: int, head_dims: list[int]) -> Plan:
    """The largest structure (lowest threshold) whose FLOPs are at most ``config.target_flops`` of the model's."""
    heads_n, chans_n = normalised(scores.heads), normalised(scores.channels)
    length = scores.mean_length
    full = structure_flops(d, [len(h) * dh for h, dh in zip(scores.heads, head_dims, strict=True)],
                           [c.numel() for c in scores.channels], length)
    min_heads = [1 if config.prune_heads else h.numel() for h in heads_n]
    min_chans = [min(c.numel(), config.mlp_multiple) if config.prune_mlp else c.numel() for c in chans_n]

    def plan_at(threshold: float) -> Plan:
        heads, chans = [], []
        for h, c, mh, mc in zip(heads_n, chans_n, min_heads, min_chans, strict=True):
            heads.append(tuple(sorted(h.argsort(descending=True, stable=True)[:kept_counts(h, threshold, mh)]
                                      .tolist())))
            count = kept_counts(c, threshold, mc, config.mlp_multiple if config.prune_mlp else 1)
            chans.append(tuple(sorted(c.argsort(descending=True, stable=True)[:count].tolist())))
        widths = [len(h) * dh for h, dh in zip(heads, head_dims, strict=True)]
        flops = structure_flops(d, widths, [len(c) for c in chans], length)
        return Plan(tuple(heads), tuple(chans), flops / full, threshold, length)

    smallest = plan_at(math.inf)
    if smallest.flops_ratio > config.target_flops:
        raise ValueError(f"target_flops={config.target_flops} cannot be met: the smallest structure allowed (one head "
                         f"per layer{', all MLP channels' if not config.prune_mlp else ''}"
                         f"{', all heads' if not config.prune_heads else ''}) costs {smallest.flops_ratio:.3f} of the "
                         "FLOPs. Raise target_flops or allow pruning both heads and MLP channels")
    pools = ([*heads_n] if config.prune_heads else []) + ([*chans_n] if config.prune_mlp else [])
    candidates = torch.cat(pools).unique().tolist()  # ascending
    lo, hi = 0, len(candidates)  # plan_at(candidates[i]) meets the budget for every i >= answer; hi: +inf
    while lo < hi:
        mid = (lo + hi) // 2
        if plan_at(candidates[mid]).flops_ratio <= config.target_flops:
            hi = mid
        else:
            lo = mid + 1
    return smallest if lo == len(candidates) else plan_at(candidates[lo])
