"""EViT (Liang et al., ICLR 2022): keep the attentive tokens, fuse the inattentive ones, training free here.

At a few layers (0-indexed 3, 6, 9 of 12 by default, scaled to other depths), between attention and MLP,
the ceil(keep_rate * n) non-prefix tokens with the highest class attention (mean over heads of the [CLS]
row) are kept and the others are fused into one token: by default (``fuse='sum'``) the official code's
class-attention-weighted sum, not normalised; ``fuse='average'`` is the weighted average the paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass

from trimformer.config import JsonConfig, check_numbers
from trimformer.core.merging import FUSE_MODES, MergePlan, evit_layers, fuse_inattentive
from trimformer.core.scoring import class_attention
from trimformer.core.selection import count_from_rate
from trimformer.engine.hooks import AttentionState, MergeHook
from trimformer.engine.policy import PruningPolicy


@dataclass
class EViTConfig(JsonConfig):
    """EViT recipe.

    keep_rate: fraction of the live non-prefix tokens kept at each pruning layer, in (0, 1]; 1 = no-op.
    layers: 0-indexed layers that prune and fuse; None = 3, 6, 9 of 12 scaled to the model's depth.
    fuse: how the inattentive tokens become one. 'sum' (default): their sum weighted by their class
        attention, unnormalised, as EViT's official code computes it (so the fused token is scaled by the
        share of class attention they had); 'average': the same weights normalised to sum to 1, the weighted
        average that the paper's description reads as (trimformer's earlier default).
    """

    keep_rate: float = 0.7
    layers: list[int] | None = None
    fuse: str = "sum"

    def __post_init__(self) -> None:
        check_numbers(self)
        if not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(f"keep_rate must be in (0, 1], got {self.keep_rate}")
        if self.fuse not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}, got {self.fuse!r}")
        if self.layers is not None:
            self.layers = list(self.layers)
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
                raise ValueError(f"layers must be 0-indexed layer numbers (ints >= 0), got {self.layers}")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must not repeat, got {self.layers}")

    def resolved_layers(self, num_layers: int) -> list[int]:
        """The pruning layers for a model of ``num_layers``; ValueError if one is out of range."""
        layers = evit_layers(num_layers) if self.layers is None else sorted(self.layers)
        bad = [i for i in layers if i >= num_layers]
        if bad:
            raise ValueError(f"EViT layers {bad} out of range for a model with {num_layers} layers "
                             f"(0-indexed, so at most {num_layers - 1})")
        return layers


class EViTPolicy(PruningPolicy):
    """Top-k by class attention plus one fused token, at the configured layers."""

    method = "evit"

    def __init__(self, num_layers: int, config: EViTConfig):
        super().__init__(num_layers)
        self.evit_config = config
        self.layers = config.resolved_layers(num_layers)

    def config(self) -> EViTConfig:
        return self.evit_config

    def merge(self, layer: int, num_prefix: int) -> MergeHook | None:
        rate, fuse = self.evit_config.keep_rate, self.evit_config.fuse
        if layer not in self.layers or rate == 1.0:
            return None

        def merge(state: AttentionState) -> MergePlan:
            scores = class_attention(state.probs)  # [B, N] attention of [CLS] to each token, mean over heads
            return fuse_inattentive(scores, state.alive, num_prefix, rate, fuse)

        def fixed_width(n: int) -> int:  # a full row of n: the kept candidates, plus one fused token if any dropped
            candidates = n - num_prefix
            dropped = candidates - count_from_rate(candidates, rate, minimum=0)
            return n - dropped + (1 if dropped > 0 else 0)

        return MergeHook(merge, query_rows=1, fixed_width=fixed_width)  # [CLS]'s row is all it reads
