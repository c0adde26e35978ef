"""Channel masks of OFARPruning: the structure of each FLOPs budget (rate) as masks on the shared weights.

- :func:`rate_structures`: each rate's kept channels (widths bisected to the budget with
  :func:`~trimformer.structured.budget.search_budget`, then the highest-scoring channels of each group);
- :func:`masked`: a context in which the model computes its sub-network (every layer of a channel group has its
  dropped output channels zeroed), sharing the dense weights; what :func:`prune_channels_` would remove
  physically, so that the masked forward and the extracted sub-network agree;
- :func:`mask_vector` / :func:`mask_similarity`: a structure as one 0/1 vector over all channels and the cosine
  similarity of two of them (the early-search stopping rule);
- :func:`resize`: inputs at another resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.structured.budget import BudgetResult, WidthCost, search_budget, uniform_widths
from trimformer.structured.graph import ChannelGroup, Structure, check_structure
from trimformer.structured.importance import keep_top

Structures = dict[float, dict[str, list[int]]]  # rate -> structure (group name -> kept channel indices)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, C, H, W) resized to (B, C, size, size) (bilinear, antialiased); unchanged when already so."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def global_widths(groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor], fraction: float,
                  min_ratio: float) -> dict[str, int]:
    """Widths from one threshold over all channels' scores, each divided by its group's mean score: the
    ``fraction`` highest-scoring channels of the whole network, at least ``min_ratio`` of each group (and one)
    kept; non-decreasing in ``fraction``."""
    normed = {g.name: scores[g.name] / scores[g.name].mean().clamp_min(1e-12) for g in groups}
    ranked = torch.cat(list(normed.values())).sort(descending=True).values  # (all channels,)
    threshold = ranked[max(0, min(len(ranked), round(fraction * len(ranked))) - 1)]
    widths = {}
    for g in groups:
        floor = max(1, math.ceil(min_ratio * g.channels))
        widths[g.name] = min(g.channels, max(floor, int((normed[g.name] >= threshold).sum())))
    return widths


def rate_widths(groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor], cost: WidthCost, rate: float,
                allocation: str, min_ratio: float, tolerance: float) -> BudgetResult:
    """Group widths whose MACs (at ``cost``'s input size) are ``rate`` x dense within ``tolerance``."""
    maximum = {g.name: g.channels for g in groups}
    if allocation == "uniform":
        return search_budget(lambda r: uniform_widths(groups, r, min_ratio), cost, rate, 0.0, 1.0, maximum,
                             fill_order=[g.name for g in groups], tolerance=tolerance)
    order = sorted(maximum, key=lambda n: -float(scores[n].max() / scores[n].mean().clamp_min(1e-12)))
    return search_budget(lambda f: global_widths(groups, scores, f, min_ratio), cost, rate, 0.0, 1.0, maximum,
                         fill_order=order, tolerance=tolerance)


def rate_structures(groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor], cost: WidthCost,
                    rates: Sequence[float], allocation: str, min_ratio: float,
                    tolerance: float) -> tuple[Structures, dict[float, BudgetResult]]:
    """Each rate's structure (its widths' highest-scoring channels) and budget result."""
    budgets = {rate: rate_widths(groups, scores, cost, rate, allocation, min_ratio, tolerance) for rate in rates}
    return {rate: keep_top(scores, b.widths) for rate, b in budgets.items()}, budgets


def mask_vector(groups: Sequence[ChannelGroup], structure: Structure) -> torch.Tensor:
    """``structure`` as one 0/1 vector (total channels,), groups in ``groups``' order (absent groups: all kept)."""
    parts = []
    for g in groups:
        mask = torch.zeros(g.channels) if g.name in structure else torch.ones(g.channels)
        if g.name in structure:
            mask[list(structure[g.name])] = 1.0
        parts.append(mask)
    return torch.cat(parts)


def mask_similarity(groups: Sequence[ChannelGroup], a: Structure, b: Structure) -> float:
    """Cosine similarity of two structures' mask vectors (1.0: the same channels kept)."""
    return float(F.cosine_similarity(mask_vector(groups, a).double(), mask_vector(groups, b).double(), dim=0))


def _channel_mask(output: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    shape = [1] * output.ndim
    shape[1] = -1  # channels: dim 1 of (B, C, H, W) and of (B, F)
    return output * keep.to(device=output.device, dtype=output.dtype).view(shape)


@contextmanager
def masked(model: nn.Module, groups: Sequence[ChannelGroup], structure: Structure) -> Iterator[nn.Module]:
    """Within the context, ``model`` computes the sub-network ``structure`` keeps: the output channels that
    :func:`~trimformer.structured.graph.prune_channels_` would remove are zeroed at every layer of their group
    (convolutions, batch norms, linears), so that no consumer sees them. The weights are shared (gradients reach
    only the kept channels' paths); the hooks are removed on exit."""
    kept = check_structure(groups, structure)
    modules = dict(model.named_modules())
    handles = []
    try:
        for g in groups:
            if g.name not in kept or len(kept[g.name]) == g.channels:
                continue
            keep = torch.zeros(g.channels, dtype=torch.bool)
            keep[kept[g.name]] = True
            for layer in g.layers:
                handles.append(modules[layer].register_forward_hook(
                    lambda _m, _inp, out, keep=keep: _channel_mask(out, keep)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
