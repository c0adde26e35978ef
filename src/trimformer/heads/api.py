"""``prune_heads_``: the in-place verb of structured head and MLP-channel pruning."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

from torch import nn

from trimformer.heads.budget import Plan, plan_budget
from trimformer.heads.config import HeadPruningConfig
from trimformer.heads.importance import Scores, score_units
from trimformer.heads.layers import STRUCTURE_KEY, _parents, layer_parts, slice_layer, structure_of
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import refuse_quantized


@dataclass
class HeadPruningResult:
    """What :func:`prune_heads_` did: the plan it applied and the importance it was chosen from."""

    plan: Plan
    scores: Scores

    @property
    def flops_ratio(self) -> float:
        return self.plan.flops_ratio


def prune_heads_(model: nn.Module, config: HeadPruningConfig, batches: Iterable[dict]) -> HeadPruningResult:
    """Remove attention heads and MLP channels of ``model`` in place until its encoder FLOPs meet
    ``config.target_flops`` (at the calibration data's mean length).

    ``model``: a transformers BERT/RoBERTa or ViT/DeiT/Dinov2 model, or a ``TokenPrunedModel`` wrapping one (its
    block views are rebuilt; a token-pruning policy keeps working on the smaller layers). ``batches``: dicts of model
    inputs (``input_ids``/``attention_mask`` or ``pixel_values``; ``labels`` for ``criterion='taylor'``), of which the
    first ``config.calibration_batches`` are scored. The structure is recorded on the model config, so
    ``trimformer.save`` / ``load`` restore the smaller model. Prune the float model before ``quantize_``; a model
    is pruned this way once (start again from the dense model for another budget).
    """
    bare = model.model if isinstance(model, TokenPrunedModel) else model
    refuse_quantized(bare, "prune heads of")
    if structure_of(bare) is not None:
        raise ValueError("the model's heads / MLP channels were pruned already (its config has "
                         f"{STRUCTURE_KEY}); prune the dense model again with the new budget instead")
    parts = layer_parts(bare)
    calibration = list(islice(iter(batches), config.calibration_batches))
    if len(calibration) < config.calibration_batches:
        raise ValueError(f"calibration_batches={config.calibration_batches} but only {len(calibration)} batches were "
                         "given: pass more data or lower calibration_batches")
    scores = score_units(bare, parts, calibration, config.criterion)
    plan = plan_budget(scores, config, parts[0].view.hidden_size, [p.head_dim for p in parts])
    parents = _parents(bare)
    for part, heads, channels in zip(parts, plan.heads, plan.channels, strict=True):
        slice_layer(bare, part, list(heads), list(channels), parents)
    setattr(bare.config, STRUCTURE_KEY, {"heads": [list(h) for h in plan.heads],
                                         "mlp_sizes": [len(c) for c in plan.channels]})
    if isinstance(model, TokenPrunedModel):
        model.rebuild_views()
    return HeadPruningResult(plan, scores)
