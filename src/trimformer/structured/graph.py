"""Channel groups and their physical removal, on Torch-Pruning's dependency graph.

A *channel group* is a set of channels that must go together: a convolution's output channels, its batch norm,
the input channels of the layers that read them, and everything coupled to them by residual additions or
depthwise convolutions (a ResNet stage's residual width is one group; a MobileNetV2 block's expanded width is
one). Torch-Pruning traces the model once (``tp.DependencyGraph().build_dependency``) and finds the groups; this
module names each group by its root layer (the module name Torch-Pruning builds it from) so that a *structure*
(group name -> kept channel indices) is plain JSON, and removes the other channels with ``group.prune()``.
Nothing here traces or counts by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

ROOT_TYPES = (nn.Conv2d, nn.Linear)  # layers a group may be rooted at (their output channels)

Structure = Mapping[str, Sequence[int]]  # group name -> kept channel indices (ascending)


class StructureError(ValueError):
    """A structure that does not fit the model (unknown group, bad indices, a group emptied)."""


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable group: ``name`` (its root layer), ``channels`` (its width now), the layers whose output
    channels it removes (``layers``) and, among them, the batch norms (``batchnorms``)."""

    name: str
    channels: int
    layers: tuple[str, ...]
    batchnorms: tuple[str, ...]


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced on ``example_inputs`` (autograd on while tracing; in eval
    mode, so that the tracing forward leaves the batch norms' running statistics as they are)."""
    training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    finally:
        model.train(training)


def output_layers(model: nn.Module) -> tuple[str, ...]:
    """The default unprunable layers: the last Conv2d/Linear in module order (the classifier, whose outputs are
    the classes)."""
    last = [name for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)][-1:]
    return tuple(last)


def _modules(model: nn.Module, names: Sequence[str], what: str) -> list[nn.Module]:
    found = dict(model.named_modules())
    unknown = [n for n in names if n not in found]
    if unknown:
        raise StructureError(f"{what}: no layer named {unknown} in {type(model).__name__}")
    return [found[n] for n in names]


def _groups(model: nn.Module, graph: tp.DependencyGraph,
            ignored: Sequence[str] | None) -> list[tuple[Any, ChannelGroup]]:
    """(Torch-Pruning group, ChannelGroup) for every prunable group, in the graph's order."""
    ignored = output_layers(model) if ignored is None else tuple(ignored)
    names = {m: n for n, m in model.named_modules()}
    is_bn = {n for m, n in names.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    out = []
    for group in graph.get_all_groups(ignored_layers=_modules(model, ignored, "ignored layers"),
                                      root_module_types=ROOT_TYPES):
        root = group[0].dep.target.module
        layers = tuple(dict.fromkeys(names[d.target.module] for d, _ in group
                                     if graph.is_out_channel_pruning_fn(d.handler) and d.target.module in names))
        bns = tuple(n for n in layers if n in is_bn)
        out.append((group, ChannelGroup(names[root], graph.get_out_channels(root), layers, bns)))
    return out


def channel_groups(model: nn.Module, example_inputs: torch.Tensor,
                   ignored: Sequence[str] | None = None) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (``ignored``: layers whose output channels stay, by default the
    classifier, :func:`output_layers`)."""
    return [g for _, g in tp_groups(model, example_inputs, ignored)]


def tp_groups(model: nn.Module, example_inputs: torch.Tensor,
              ignored: Sequence[str] | None = None) -> list[tuple[Any, ChannelGroup]]:
    """(Torch-Pruning group over all channels, :class:`ChannelGroup`) pairs: what importance criteria score."""
    return _groups(model, build_graph(model, example_inputs), ignored)


def check_structure(groups: Sequence[ChannelGroup], structure: Structure) -> dict[str, list[int]]:
    """``structure`` validated against ``groups``: known group names, unique in-range indices, at least one channel
    kept per group. Groups it does not name keep all their channels. Returns it as sorted lists."""
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(structure) - set(by_name))
    if unknown:
        raise StructureError(f"structure names unknown channel groups {unknown}; the model's groups are "
                             f"{sorted(by_name)}")
    checked = {}
    for name, idxs in structure.items():
        kept = sorted(int(i) for i in idxs)
        width = by_name[name].channels
        if not kept:
            raise StructureError(f"channel group {name!r} would lose all its {width} channels; keep at least one")
        if len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= width:
            raise StructureError(f"channel group {name!r}: kept indices must be distinct and in [0, {width}), "
                                 f"got {list(idxs)[:10]}...")
        checked[name] = kept
    return checked


def prune_channels_(model: nn.Module, example_inputs: torch.Tensor, structure: Structure,
                    ignored: Sequence[str] | None = None) -> nn.Module:
    """Physically remove, in place, every channel that ``structure`` (group name -> kept indices) does not keep;
    returns ``model``. Each group's root layer, batch norms and consuming layers shrink together."""
    graph = build_graph(model, example_inputs)
    pairs = _groups(model, graph, ignored)
    kept = check_structure([g for _, g in pairs], structure)
    modules = dict(model.named_modules())
    for _, group in pairs:
        if group.name not in kept or len(kept[group.name]) == group.channels:
            continue
        root = modules[group.name]
        removed = sorted(set(range(group.channels)) - set(kept[group.name]))
        pruner = graph.get_pruner_of_module(root)
        tp_group = graph.get_pruning_group(root, pruner.prune_out_channels, removed)
        if not graph.check_pruning_group(tp_group):
            raise StructureError(f"Torch-Pruning refuses to prune channel group {group.name!r} to "
                                 f"{len(kept[group.name])} channels")
        tp_group.prune()
    return model


def first_channels(counts: Mapping[str, int]) -> dict[str, list[int]]:
    """The structure keeping the first ``counts[g]`` channels of each group (for shapes only: MAC counts, loading)."""
    return {name: list(range(n)) for name, n in counts.items()}


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """[in, out] channels of every Conv2d / Linear and [features] of every batch norm: the record of a pruned
    model's shape that loading checks."""
    widths: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            widths[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            widths[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            widths[name] = [m.num_features]
    return widths
