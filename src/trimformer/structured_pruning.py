"""``trimformer.structured_prune``: structured (channel) pruning of a CNN to a FLOPs budget, one call.

Why a verb of its own rather than ``trimformer.prune``: ``prune`` wraps a model for token reduction, sharing its
weights, with no data; a structured method trains (sparse training, fine-tuning), chooses channels on data and
returns a *new, physically smaller* model. The other verbs line up: ``trimformer.save`` / ``trimformer.load``
write and read the smaller model (safetensors + its record), ``trimformer.structured.train.accuracy`` evaluates
it, and ``trimformer.prune(model, AdaPrunerConfig(...))`` says to call this instead.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from trimformer.structured.adapruner import adaprune
from trimformer.structured.config import AdaPrunerConfig
from trimformer.structured.ofar import ofar_prune
from trimformer.structured.ofar_config import OFARConfig
from trimformer.structured.record import StructuredResult
from trimformer.structured.train import Images

# config type -> the method's function(model, config, train, val, example_inputs, progress) -> StructuredResult
STRUCTURED_METHODS = MappingProxyType({AdaPrunerConfig: adaprune, OFARConfig: ofar_prune})


def structured_prune(model: nn.Module, config: Any, train: Images, val: Images | None = None, *,
                     example_inputs: torch.Tensor | None = None, progress: bool = True) -> StructuredResult:
    """Prune ``model``'s channels with the method ``config`` names (``AdaPrunerConfig``, ``OFARConfig``), training
    on ``train`` (images (N, C, H, W) normalised as the model expects, labels (N,)); ``val`` (same form) chooses
    among candidates where the method does (default: ``train``). ``model`` is left unchanged. Returns the physically
    smaller model (eval mode; save it with ``trimformer.save``) and a JSON report (widths, MACs, choices). With
    ``OFARConfig`` the result is an :class:`~trimformer.structured.ofar.OFARResult`: ``model`` is the shared dense
    network, and ``result.subnet(rate, resolution, train)`` extracts each physically smaller sub-network."""
    method = STRUCTURED_METHODS.get(type(config))
    if method is None:
        known = ", ".join(t.__name__ for t in STRUCTURED_METHODS)
        raise TypeError(f"{type(config).__name__} is not a structured pruning config; use one of: {known}")
    return method(model, config, train, val, example_inputs=example_inputs, progress=progress)
