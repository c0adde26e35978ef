"""Weights saved under another transformers version's module names, renamed by transformers' own table.

transformers renames modules between versions (DINOv2's ``attention.attention.query`` became
``attention.q_proj``) and renames old checkpoints as ``from_pretrained`` reads them. trimformer restores its
checkpoints with ``load_state_dict``, so it applies the same renames itself, from
``transformers.conversion_mapping`` (plain renames only; weight splits and fusions are not needed for any model
trimformer supports). Where the table does not exist (older transformers) nothing is renamed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn


def _renames(model: nn.Module) -> list[tuple[str, str]]:
    """(source regex, target) pairs of the model's plain renames; empty where transformers has no table."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping
    except ImportError:
        return []
    pairs = []
    for rule in get_model_conversion_mapping(model):
        if isinstance(rule, WeightRenaming) and len(rule.target_patterns) == 1:
            pairs += [(source, rule.target_patterns[0]) for source in rule.source_patterns]
    return pairs


def renamed_to_fit(state: dict[str, torch.Tensor], model: nn.Module, known: Iterable[str],
                   prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` with each key that ``known`` lacks renamed by ``model``'s transformers renames (keys start with
    ``prefix``, e.g. ``"model."`` for a wrapped model; the rules see the key without it). A key that no rule turns
    into a known one is left as it is, so the caller's own check still reports it."""
    known = set(known)
    if set(state) <= known:
        return state
    renames = _renames(model)
    out = {}
    for key, value in state.items():
        if key not in known and key.startswith(prefix):
            inner = key[len(prefix):]
            for source, target in renames:
                inner = re.sub(source, target, inner)
            if prefix + inner in known:
                key = prefix + inner
        out[key] = value
    return out
