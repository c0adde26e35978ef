"""The typed protocol between pruning policies and the block step.

A policy hands the engine its hooks once per forward (:class:`ForwardHooks`): per block, at most one
:class:`Decision` (pruning right after the attention softmax: LTP, top-k, SaiT, AS-ViT; dropped tokens skip
the rest of the block) or one :class:`MergeHook` (between attention and MLP: ToMe, EViT). Each hook says what
it reads, so the block computes no more than that: ``query_rows`` (only the first r query rows of the
probabilities, e.g. 1 for class attention, 0 for ToMe which reads keys), ``needs_values`` and
``accepts_all_live`` (takes ``alive=None`` when every token is live).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trimformer.core.merging import MergePlan


@dataclass
class StraightThroughKeep:
    """A hard decision that passes a gradient (straight-through estimator), returned by a decision.

    Tokens are removed or masked by ``hard`` exactly as for a bool mask; the kept outputs are multiplied by
    ``gate``, which is 1 there in value and carries the gradient of a soft mask.
    """

    hard: torch.Tensor  # bool [B, N]
    gate: torch.Tensor  # float [B, N]


Keep = torch.Tensor | StraightThroughKeep | None  # bool mask (hard), float weights (soft), STE, or None: keep all


@dataclass(frozen=True, eq=False)  # identity hash: Dynamo (torch 2.11) hashes half-built objects
class Decision:
    """A pruning decision on one block's attention.

    fn(probs [B, H, R, N], alive bool [B, N] | None[, values [B, H, N, Dh]]) -> a bool keep mask [B, N], a
    float keep weight [B, N] (soft stage), a :class:`StraightThroughKeep`, or None (nothing pruned).
    query_rows: R, the leading query rows it reads (None: all N); the block then computes just those rows
        explicitly and the attention context fused.
    needs_values: fn takes the attention values as a third argument.
    accepts_all_live: fn takes ``alive=None`` to mean every token is live (spares reading the mask).
    fixed_width: for a fixed-count decision (top-k, SaiT top-K), n -> the exact number of tokens each row keeps
        when all of its n slots are live. A traced or compiled forward on unpadded inputs then packs to that width,
        a size known from the shapes, instead of a data-dependent one (one graph, static shapes under inductor).
    """

    fn: Callable[..., Keep]
    query_rows: int | None = None
    needs_values: bool = False
    accepts_all_live: bool = False
    fixed_width: Callable[[int], int] | None = None

    def __call__(self, probs: torch.Tensor, alive: torch.Tensor, values: torch.Tensor,
                 all_live: bool | None = None) -> Keep:
        mask = None if all_live and self.accepts_all_live else alive
        return self.fn(probs, mask, values) if self.needs_values else self.fn(probs, mask)


@dataclass
class AttentionState:
    """What a merge hook sees, after the attention residual and before the MLP."""

    probs: torch.Tensor | None  # [B, H, R, N] post-softmax attention (before dropout), R = the hook's query_rows
    # (every row where that is None; None for R = 0)
    keys: torch.Tensor  # [B, H, N, Dh]
    hidden: torch.Tensor  # [B, N, D] block state after the attention residual
    alive: torch.Tensor  # bool [B, N]
    sizes: torch.Tensor  # [B, N] original tokens each slot stands for (1 before any merge, 0 when dead)


@dataclass(frozen=True, eq=False)  # identity hash: Dynamo (torch 2.11) hashes half-built objects
class MergeHook:
    """A merge (ToMe) or fusion (EViT) between attention and MLP: fn(state) -> :class:`MergePlan` or None.

    query_rows: as for :class:`Decision` (0: reads no probabilities, only keys).
    fixed_width: as for :class:`Decision`: n -> the slots each row keeps after the merge when all n are live.
    """

    fn: Callable[[AttentionState], MergePlan | None]
    query_rows: int | None = None
    fixed_width: Callable[[int], int] | None = None

    def __call__(self, state: AttentionState) -> MergePlan | None:
        return self.fn(state)


@dataclass(frozen=True)
class LayerHooks:
    """What one block does besides its dense computation: a decision, a merge, or neither."""

    decide: Decision | None = None
    merge: MergeHook | None = None

    def __post_init__(self) -> None:
        if self.decide is not None and self.merge is not None:
            raise ValueError("a block takes either a pruning decision or a merge, not both")


NO_HOOKS = LayerHooks()


@dataclass(frozen=True)
class ForwardHooks:
    """A policy's hooks for one forward.

    layers: one :class:`LayerHooks` per block. proportional_attention: add log(token size) to the attention
    logits once tokens have merged (ToMe). whole_batch: the policy records whole batches in this forward (a
    capture is open), so the engine must not split the batch (no regrouping or row chunks).
    """

    layers: tuple[LayerHooks, ...]
    proportional_attention: bool = False
    whole_batch: bool = False
