"""Channel importance criteria (which channels a group keeps) and the choice of kept indices.

- ``l1``: Torch-Pruning's group L1 norm (``GroupMagnitudeImportance(p=1)``, no normalisation): the mean over the
  group's convolutions / linears of the channel's weights' absolute sum (the producing filters and the consuming
  layers' input slices);
- ``bn_scale``: the mean |gamma| of the group's batch norms (``BNScaleImportance``), network slimming's score;
- ``random``: uniform noise from a seeded generator (the control).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
import torch_pruning as tp
from torch import nn

from trimformer.structured.graph import Structure, StructureError, tp_groups

CRITERIA = ("l1", "bn_scale", "random")

_TP_IMPORTANCE = MappingProxyType({
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None,
                                                         target_types=[nn.modules.conv._ConvNd, nn.Linear]),
    "bn_scale": lambda: tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None),
})


def check_criterion(name: str) -> str:
    if name not in CRITERIA:
        raise ValueError(f"unknown importance criterion {name!r}; expected one of {', '.join(CRITERIA)}")
    return name


@torch.no_grad()
def channel_scores(model: nn.Module, example_inputs: torch.Tensor, criterion: str, seed: int = 0,
                   ignored: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Group name -> per-channel score (channels,) under ``criterion`` (higher = more important)."""
    check_criterion(criterion)
    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for tp_group, group in tp_groups(model, example_inputs, ignored):
        if criterion == "random":
            scores[group.name] = torch.rand(group.channels, generator=gen)
            continue
        imp = _TP_IMPORTANCE[criterion]()(tp_group)
        if imp is None:
            what = "batch norm" if criterion == "bn_scale" else "weights"
            raise StructureError(f"channel group {group.name!r} has no {what} to score with the {criterion} "
                                 "criterion")
        scores[group.name] = imp.detach().float().cpu()
    return scores


def keep_top(scores: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> dict[str, list[int]]:
    """The structure keeping, in each group, the ``widths[g]`` highest-scoring channels (ascending indices)."""
    structure: dict[str, list[int]] = {}
    for name, n in widths.items():
        order = torch.argsort(scores[name], descending=True, stable=True)
        structure[name] = sorted(order[:n].tolist())
    return structure


def structure_widths(structure: Structure) -> dict[str, int]:
    return {name: len(idxs) for name, idxs in structure.items()}
