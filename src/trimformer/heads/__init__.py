"""Structured pruning of transformer encoders: attention heads and MLP channels removed physically under a FLOPs
budget (``prune_heads_``), composable with token pruning (``trimformer.prune``) and quantization
(``trimformer.quantize_``) in one saved model. See docs/structured_transformers.md."""

from trimformer.heads.api import HeadPruningResult, prune_heads_
from trimformer.heads.budget import Plan, plan_budget, structure_flops
from trimformer.heads.config import CRITERIA, HeadPruningConfig
from trimformer.heads.importance import Scores, channel_contribution_norms, head_contribution_norms, score_units
from trimformer.heads.layers import STRUCTURE_KEY, apply_structure, layer_parts, structure_of

__all__ = ["CRITERIA", "STRUCTURE_KEY", "HeadPruningConfig", "HeadPruningResult", "Plan", "Scores",
           "apply_structure", "channel_contribution_norms", "head_contribution_norms", "layer_parts", "plan_budget",
           "prune_heads_", "score_units", "structure_flops", "structure_of"]
