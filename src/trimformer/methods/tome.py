"""ToMe, Token Merging (Bolya et al., ICLR 2023), training free, on the shared block runner.

Written here from the paper and from reading the official code (its code is not copied); the defaults reproduce
the official code's merges and survivor order (tests/test_official_merging.py). In every layer, between attention
and MLP,
bipartite soft matching merges ``r`` tokens by the cosine similarity of their attention keys (mean over
heads); merged tokens are size-weighted averages and, with proportional attention, a token of size s
counts as s tokens in later softmaxes. Prefix tokens ([CLS], DeiT's distillation token) are never merged.
"""

from __future__ import annotations

from dataclasses import dataclass

from trimformer.config import JsonConfig
from trimformer.core.merging import MergePlan, bipartite_soft_matching
from trimformer.engine.hooks import AttentionState, MergeHook
from trimformer.engine.policy import PruningPolicy


@dataclass
class ToMeConfig(JsonConfig):
    """ToMe recipe.

    r: tokens merged per layer (constant schedule; 0 = no merging). A layer merges at most half of its
        mergeable tokens, as in the paper.
    proportional_attention: add log(token size) to the attention logits of each key.
    split: which tokens the A/B alternation of the bipartite matching runs over. 'official' (default): all
        live tokens, [CLS] included (it lands in set A and is barred from matching), as ToMe's official code
        does; 'mergeable': the non-prefix tokens only (trimformer's earlier rule, which puts every token in
        the other set, so that almost no merged pair is the official one).
    order: where the survivors of a merge go. 'official' (default): [prefix tokens, unmerged A tokens,
        B tokens], the official code's order; it decides the next layer's A/B split, so together with
        split='official' it makes a whole model match the official code. 'slots': every survivor stays in
        its slot (trimformer's earlier behaviour).
    The defaults follow the official code because that is what ToMe's published numbers come from; the
    other values are kept to reproduce results obtained with them.
    """

    r: int = 8
    proportional_attention: bool = True
    split: str = "official"
    order: str = "official"

    @classmethod
    def from_dict(cls, data: dict) -> ToMeConfig:
        """A saved config; one saved before ``split``/``order`` existed keeps the behaviour it was saved with."""
        return super().from_dict({"split": "mergeable", "order": "slots", **data})

    def __post_init__(self) -> None:
        from trimformer.core.merging import TOME_ORDERS, TOME_SPLITS

        if isinstance(self.r, bool) or not isinstance(self.r, int):
            raise ValueError(f"r (tokens merged per layer) must be an integer, got {self.r!r}")
        if self.r < 0:
            raise ValueError(f"r (tokens merged per layer) must be >= 0, got {self.r}")
        if self.split not in TOME_SPLITS:
            raise ValueError(f"split must be one of {TOME_SPLITS}, got {self.split!r}")
        if self.order not in TOME_ORDERS:
            raise ValueError(f"order must be one of {TOME_ORDERS}, got {self.order!r}")


class ToMePolicy(PruningPolicy):
    """Merges ``config.r`` tokens in every layer; no learned parameters, no state between forwards."""

    method = "tome"

    def __init__(self, num_layers: int, config: ToMeConfig):
        super().__init__(num_layers)
        self.tome_config = config

    @property
    def proportional_attention(self) -> bool:  # type: ignore[override]
        return self.tome_config.proportional_attention

    def config(self) -> ToMeConfig:
        return self.tome_config

    def merge(self, layer: int, num_prefix: int) -> MergeHook | None:
        r = self.tome_config.r
        if r == 0:
            return None

        def merge(state: AttentionState) -> MergePlan:
            metric = state.keys.mean(dim=1)  # [B, N, Dh] keys averaged over heads
            return bipartite_soft_matching(metric, r, state.alive, num_prefix, weight=state.sizes,
                                           split=self.tome_config.split, order=self.tome_config.order)

        return MergeHook(merge, query_rows=0)  # keys only: the block's attention runs fused
