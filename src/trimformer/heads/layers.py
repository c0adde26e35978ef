"""Physical removal of attention heads and MLP channels from a transformers encoder, and the record that lets a
checkpoint rebuild the smaller shapes before its weights are loaded.

The projections are sliced with transformers' ``prune_linear_layer`` (rows of the query, key, value and first MLP
projections; columns of the attention-output and second MLP projections) and the attention module's head count is
updated; transformers' own forward and trimformer's engine then run the smaller layers (both read the head count
from the module and the head size from the projections). transformers 5 has no ``prune_heads`` any more (nor
``config.pruned_heads``), so the structure is recorded on the model config under :data:`STRUCTURE_KEY`, which
``config.to_dict()`` and therefore every trimformer checkpoint carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from trimformer.adapters import UnsupportedModelError, adapter_for
from trimformer.engine.view import BlockView

STRUCTURE_KEY = "trimformer_structure"  # model config attribute: {"heads": [[kept head ids]...], "mlp_sizes": [...]}


@dataclass
class LayerParts:
    """The prunable modules of one block, with the modules that hold them (to swap in the sliced copies)."""

    view: BlockView
    attention: nn.Module  # holds ``num_attention_heads`` and the query / key / value projections

    @property
    def head_dim(self) -> int:
        return self.view.attn_width // self.view.num_heads


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(module) -> (its parent, its attribute name), for every submodule."""
    return {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}


def layer_parts(model: nn.Module) -> list[LayerParts]:
    """The blocks of a supported transformers encoder (BERT, RoBERTa, ViT, DeiT, Dinov2), refusing any other."""
    adapter = adapter_for(model)
    if adapter.name not in ("bert", "vit"):
        raise UnsupportedModelError(f"head pruning supports transformers' BERT/RoBERTa and ViT/DeiT/Dinov2 models; "
                                    f"{type(model).__name__} ({adapter.name} adapter) is not one of them")
    parents = _parents(model)
    parts = []
    for view in adapter.blocks(model):
        holder = parents[id(view.query)][0]
        if not hasattr(holder, "num_attention_heads") or view.qkv is not None:
            raise UnsupportedModelError(f"{type(model).__name__}: cannot find the attention heads of a block")
        parts.append(LayerParts(view, holder))
    return parts


def _swap(parents: dict[int, tuple[nn.Module, str]], old: nn.Module, new: nn.Module) -> None:
    parent, name = parents[id(old)]
    setattr(parent, name, new)


def _head_rows(heads: list[int], head_dim: int, device: torch.device) -> torch.Tensor:
    """Indices of the projection rows of ``heads`` (each head owns ``head_dim`` consecutive rows)."""
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim, device=device) for h in heads])


def slice_layer(model: nn.Module, part: LayerParts, heads: list[int] | None, channels: list[int] | None,
                parents: dict[int, tuple[nn.Module, str]]) -> None:
    """Keep attention ``heads`` (ids in the layer's current order) and MLP ``channels`` of one block; None keeps all.
    """
    view = part.view
    if heads is not None and len(heads) < view.num_heads:
        if not heads:
            raise ValueError("every layer keeps at least one attention head")
        rows = _head_rows(sorted(heads), part.head_dim, view.query.weight.device)
        for lin in (view.query, view.key, view.value):
            _swap(parents, lin, prune_linear_layer(lin, rows, dim=0))
        _swap(parents, view.attn_out, prune_linear_layer(view.attn_out, rows, dim=1))
        part.attention.num_attention_heads = len(heads)
        if hasattr(part.attention, "all_head_size"):  # BERT's self-attention keeps the width too
            part.attention.all_head_size = len(heads) * part.head_dim
    if channels is not None and len(channels) < view.mlp_size:
        if not channels:
            raise ValueError("every layer keeps at least one MLP channel")
        index = torch.tensor(sorted(channels), device=view.mlp_in.weight.device)
        _swap(parents, view.mlp_in, prune_linear_layer(view.mlp_in, index, dim=0))
        _swap(parents, view.mlp_out, prune_linear_layer(view.mlp_out, index, dim=1))


def structure_of(model: nn.Module) -> dict[str, Any] | None:
    """The recorded structure of a head-pruned model (``{"heads": [[kept original head ids]...], "mlp_sizes":
    [...]}``), or None for a model whose heads and MLP channels were never pruned."""
    return getattr(getattr(model, "config", None), STRUCTURE_KEY, None)


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> None:
    """Give a freshly built full-size model the shapes of ``structure`` (the weights are placeholders: load the
    saved state next). Used by :mod:`trimformer.checkpoint` before loading a head-pruned model's weights."""
    parts = layer_parts(model)
    heads, sizes = structure.get("heads"), structure.get("mlp_sizes")
    if not isinstance(heads, list) or not isinstance(sizes, list) or not len(heads) == len(sizes) == len(parts):
        raise ValueError(f"the recorded {STRUCTURE_KEY} {structure!r} does not describe the model's {len(parts)} "
                         "layers; re-create the checkpoint")
    parents = _parents(model)
    for part, kept, size in zip(parts, heads, sizes, strict=True):
        if not 1 <= len(kept) <= part.view.num_heads or not 1 <= int(size) <= part.view.mlp_size:
            raise ValueError(f"the recorded {STRUCTURE_KEY} {structure!r} does not fit the model's layers")
        slice_layer(model, part, list(range(len(kept))), list(range(int(size))), parents)
    setattr(model.config, STRUCTURE_KEY, {"heads": [list(k) for k in heads], "mlp_sizes": [int(s) for s in sizes]})
