"""A physically pruned copy of a model, carrying the record that rebuilds its architecture.

The record (``model.trimformer_structure``, plain JSON) names the dense architecture (a
:mod:`trimformer.vision.cnn_zoo` name and its constructor arguments, when the model came from
:func:`~trimformer.vision.cnn_zoo.build_cnn`), the example input's shape the dependency graph was traced on, the
unprunable layers, every channel group's dense width and kept indices, the per-layer widths after pruning, and the
recipe (the method's config) that chose them. :mod:`trimformer.structured.store` saves it next to the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trimformer.structured.graph import Structure, channel_groups, check_structure, layer_widths, prune_channels_
from trimformer.vision.cnn_zoo import cnn_architecture

RECORD_ATTR = "trimformer_structure"


def structure_record(model: nn.Module) -> dict[str, Any] | None:
    """The record of a model made by :func:`pruned_copy`, None for any other model."""
    return getattr(model, RECORD_ATTR, None)


def pruned_copy(model: nn.Module, example_inputs: torch.Tensor, structure: Structure,
                recipe: dict[str, Any] | None = None, ignored: Sequence[str] | None = None) -> nn.Module:
    """A deep copy of ``model`` with every channel ``structure`` does not keep removed; ``model`` is untouched.

    ``structure``: group name (see :func:`~trimformer.structured.graph.channel_groups`) -> kept channel indices;
    groups it leaves out keep everything. ``recipe`` (JSON) is recorded for the checkpoint. A model that is
    already pruned is refused: prune the dense model (its record would no longer rebuild it)."""
    if structure_record(model) is not None:
        raise ValueError("this model is already structurally pruned; prune the dense model it came from instead")
    groups = channel_groups(model, example_inputs, ignored)
    kept = check_structure(groups, structure)
    small = copy.deepcopy(model)
    prune_channels_(small, example_inputs, kept, ignored)
    record = {
        "architecture": cnn_architecture(model),
        "model_class": type(model).__name__,
        "input_shape": [1, *example_inputs.shape[1:]],
        "ignored": None if ignored is None else list(ignored),
        "groups": {g.name: {"channels": g.channels, "kept": kept.get(g.name, list(range(g.channels)))}
                   for g in groups},
        "widths": layer_widths(small),
        "recipe": dict(recipe or {}),
    }
    setattr(small, RECORD_ATTR, record)
    return small


@dataclass
class StructuredResult:
    """What a structured method returns: the physically smaller ``model`` (eval mode, carrying its record) and a
    JSON ``report`` of how it was made (widths, MACs, the criterion chosen, losses...)."""

    model: nn.Module
    report: dict[str, Any]
