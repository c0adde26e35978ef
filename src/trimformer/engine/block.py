"""The block step: one transformer block, with a pruning decision right after the attention softmax or a merge
between attention and MLP (see :mod:`trimformer.engine.hooks`).

A block with nothing to decide or merge runs fused attention (no [B, H, N, N] tensor). Decided blocks remove
dropped tokens (``packed``) or keep them zeroed and masked out of later attention (``masked``, the official LTP
behaviour); soft keep weights (LTP's soft stage) never remove tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trimformer.core.merging import merge_tokens
from trimformer.core.packing import gather_tokens, kept_counts, kept_first, packing_index
from trimformer.core.selection import protect_tokens
from trimformer.engine.attention import (
    attention_parts,
    attn_drop,
    decide_and_mix,
    decide_with_context,
    drop,
    fused_context,
    leading_rows_attention,
    rows_read,
    scaled_qkv,
)
from trimformer.engine.compaction import on_live_slots
from trimformer.engine.hooks import AttentionState, Decision, LayerHooks, MergeHook, StraightThroughKeep
from trimformer.engine.linears import Linears
from trimformer.engine.settings import StepSettings
from trimformer.engine.view import BlockView


@dataclass
class TokenState:
    """The tokens of some rows of a batch between two blocks."""

    x: torch.Tensor  # [B, M, D]
    alive: torch.Tensor  # bool [B, M]: live tokens
    positions: torch.Tensor  # long [B, M]: original position of each slot
    soft_keep: torch.Tensor | None = None  # [B, M] cumulative soft keep weight (soft stage only)
    sizes: torch.Tensor | None = None  # [B, M] original tokens behind each slot (once a merge happened)
    n_live: torch.Tensor | None = None  # [B] live tokens, when known (saves reading ``alive`` again)
    all_live: bool | None = None  # every slot of ``alive`` is True (None: not known without reading it)
    protected: torch.Tensor | None = None  # bool [B, M]: tokens no decision may drop (a pair's [SEP]s), or None

    def select(self, rows: torch.Tensor, width: int) -> TokenState:
        """Rows ``rows`` (long [g]) of a packed batch, cut to ``width`` slots (live tokens come first)."""
        return TokenState(self.x[rows, :width], self.alive[rows, :width], self.positions[rows, :width], None,
                          None if self.sizes is None else self.sizes[rows, :width],
                          None if self.n_live is None else self.n_live[rows], None,
                          None if self.protected is None else self.protected[rows, :width])


@dataclass
class BlockResult:
    """Output of one block step: the next :class:`TokenState` and this block's counts."""

    state: TokenState
    n_in: torch.Tensor  # [B] live tokens that entered the block (soft: expected count)
    n_out: torch.Tensor  # [B] tokens kept after the block's decision (soft: expected count)
    n_rows: torch.Tensor | None = None  # [B] query rows given an attention output; None: n_out (pruning)
    extra_macs: torch.Tensor | None = None  # [B] MACs of the merge decision itself (ToMe's similarities)


def attention_branch(block: BlockView, x: torch.Tensor, context: torch.Tensor, linears: Linears) -> torch.Tensor:
    """x plus the projected attention context (then LN for post-norm blocks). [B, M, D] x2 -> [B, M, D]."""
    attn = drop(block.attn_out_dropout, linears(block.attn_out, context))
    if block.pre_norm:
        if block.layer_scale_attn is not None:
            attn = block.layer_scale_attn(attn)
        return x + drop(block.residual_drop, attn)
    return block.norm_attn(x + attn)


def mlp_residual(block: BlockView, x: torch.Tensor, linears: Linears) -> torch.Tensor:
    """Second half of the block: x plus the MLP branch (then LN for post-norm blocks). [B, M, D] -> [B, M, D]."""
    if block.pre_norm:
        mlp = drop(block.hidden_dropout, linears(block.mlp_out, block.activation(linears(block.mlp_in,
                                                                                          block.norm_mlp(x)))))
        if block.layer_scale_mlp is not None:
            mlp = block.layer_scale_mlp(mlp)
        return x + drop(block.residual_drop, mlp)
    mlp = drop(block.hidden_dropout, linears(block.mlp_out, block.activation(linears(block.mlp_in, x))))
    return block.norm_mlp(x + mlp)


def per_token_half(block: BlockView, x: torch.Tensor, context: torch.Tensor, settings: StepSettings,
                   live: torch.Tensor | None = None) -> torch.Tensor:
    """x plus the projected attention context, then the MLP: [B, M, D] x2 -> [B, M, D].

    ``live`` (bool [B, M], given for a packed batch with padding under compaction): padding slots come out zero,
    and where they are many only the live ones are computed (:mod:`trimformer.engine.compaction`).
    """
    linears = settings.linears

    def per_token(x_: torch.Tensor, context_: torch.Tensor) -> torch.Tensor:
        return mlp_residual(block, attention_branch(block, x_, context_, linears), linears)

    if live is None:
        return per_token(x, context)
    return on_live_slots(per_token, x, context, live, settings.compact_min_padding)


def _compacting(settings: StepSettings) -> bool:
    return settings.compact_min_padding is not None


def static_width(hook: Decision | MergeHook, state: TokenState, settings: StepSettings, all_live: bool) -> int | None:
    """The width a fixed-count hook packs every row to, when it is known from the shapes alone: traceable
    execution (a graph must not read it off the data), every slot live, no protected tokens. Else None."""
    if not settings.traceable or all_live is not True or hook.fixed_width is None:
        return None
    if state.protected is not None or state.soft_keep is not None:
        return None
    return hook.fixed_width(state.x.shape[1])


def run_block(block: BlockView, state: TokenState, hooks: LayerHooks, settings: StepSettings,
              attn_bias: torch.Tensor | None = None) -> BlockResult:
    """One block on ``state`` (x [B, N, D], alive bool [B, N], positions long [B, N]) with its hooks.

    ``attn_bias`` [B, N] is added to the attention logits of each key (ToMe's proportional attention).
    """
    x, alive = state.x, state.alive
    h = block.norm_attn(x) if block.pre_norm else x
    n_in = alive.sum(dim=1).to(x.dtype) if state.n_live is None else state.n_live
    all_live = state.all_live
    if all_live is None:  # a trace must not fix it from its example: then every key is masked
        all_live = False if settings.traceable else bool(alive.all())
    decide, merge = hooks.decide, hooks.merge
    if decide is None and merge is None and state.soft_keep is None and settings.fused_attention:
        q, k, v = scaled_qkv(block, h, settings.linears)  # [B, H, N, Dh] each
        context = fused_context(block, q, k, v, alive, attn_bias, all_live, settings.traceable)  # [B, N, D]
        live = alive if _compacting(settings) and not all_live else None
        out = per_token_half(block, x, context, settings, live)
        return BlockResult(TokenState(out, alive, state.positions, None, state.sizes, n_in, all_live, state.protected),
                           n_in, n_in)
    if merge is not None:
        if state.soft_keep is not None:
            raise ValueError("a merging block cannot run in a soft pruning stage")
        return _merge_step(block, state, h, merge, settings, attn_bias, n_in, all_live)
    if decide is None:  # no hook, but explicit attention was asked for (or a soft stage carries on)
        _, context = decide_and_mix(block, h, alive, None, settings, attn_bias, all_live)  # [B, N, D]
        keep, context_of = None, (lambda index: context)
    else:
        keep, context_of = decide_with_context(block, h, alive, decide, settings, attn_bias, all_live)
    width = None if decide is None else static_width(decide, state, settings, all_live)
    return _apply_decision(block, state, keep, context_of, settings, n_in, all_live, width)


def _apply_decision(block: BlockView, state: TokenState, keep, context_of, settings: StepSettings,
                    n_in: torch.Tensor, all_live: bool, width: int | None = None) -> BlockResult:
    """The rest of a deciding block: keep everything, weight softly, mask, or remove the dropped tokens.

    ``width``: every row keeps exactly this many tokens (:func:`static_width`), so packing needs no count."""
    x, alive, positions, soft_keep, sizes = state.x, state.alive, state.positions, state.soft_keep, state.sizes
    protected = state.protected
    gate = None
    if isinstance(keep, StraightThroughKeep):
        keep, gate = keep.hard, keep.gate  # [B, N] each
        if protected is not None:
            gate = torch.where(protected, torch.ones_like(gate), gate)
    keep = protect_tokens(keep, protected)

    if keep is None:
        out = per_token_half(block, x, context_of(None), settings)
        return BlockResult(TokenState(out, alive, positions, soft_keep, sizes, n_in, all_live, protected), n_in, n_in)

    if keep.dtype != torch.bool:  # soft stage: scale outputs by the cumulative keep weight
        weight = keep * alive.to(keep.dtype) if soft_keep is None else keep * soft_keep
        out = per_token_half(block, x, context_of(None), settings) * weight[..., None]
        n_soft_in = n_in if soft_keep is None else soft_keep.sum(dim=1)
        # soft counts are expectations, not counts: the next block reads ``alive`` itself
        return BlockResult(TokenState(out, alive, positions, weight, sizes, protected=protected), n_soft_in,
                           weight.sum(dim=1))

    if not all_live:
        keep = keep & alive
    if not settings.packed:
        n_out = keep.sum(dim=1).to(x.dtype)
        weight = keep.to(x.dtype) if gate is None else keep.to(x.dtype) * gate  # [B, N]
        out = per_token_half(block, x, context_of(None), settings) * weight[..., None]
        kept_sizes = None if sizes is None else sizes * keep.to(sizes.dtype)
        return BlockResult(TokenState(out, keep, positions, None, kept_sizes, n_out, protected=protected), n_in,
                           n_out)

    if width is None:
        index, packed_alive = packing_index(keep)  # [B, M]
        if torch.compiler.is_compiling():  # prefix tokens are always kept: M >= 1 (a compiled graph needs telling)
            torch._check(index.shape[1] > 0)
        n_out = kept_counts(keep, index, x.dtype)
        padded = index.shape[0] > 1  # one packed row has no padding
    else:  # a fixed count on full rows: a width known from the shapes, no padding
        index = kept_first(keep, width)  # [B, width]
        packed_alive = torch.ones(index.shape, dtype=torch.bool, device=index.device)
        n_out = torch.full((index.shape[0],), width, dtype=x.dtype, device=x.device)
        padded = False
    compact = _compacting(settings) and padded
    unchanged = not settings.traceable and x.shape[0] == 1 and index.shape[1] == x.shape[1]  # nothing dropped
    kept_x = x if unchanged else gather_tokens(x, index)  # [B, M, D]
    out = per_token_half(block, kept_x, context_of(index), settings, packed_alive if compact else None)
    if padded and not compact:  # zero the padding slots (compaction did)
        out = out * packed_alive[..., None].to(out.dtype)
    if gate is not None:
        out = out * gather_tokens(gate, index)[..., None]
    kept_sizes = None if sizes is None else gather_tokens(sizes, index) * packed_alive.to(sizes.dtype)
    all_live_out = True if out.shape[0] == 1 or width is not None else None  # no padding: one row, or full rows
    kept_protected = None if protected is None else gather_tokens(protected, index) & packed_alive
    return BlockResult(TokenState(out, packed_alive, gather_tokens(positions, index), None, kept_sizes, n_out,
                                  all_live_out, kept_protected), n_in, n_out)


def _merge_step(block: BlockView, state: TokenState, h: torch.Tensor, merge: MergeHook, settings: StepSettings,
                attn_bias: torch.Tensor | None, n_in: torch.Tensor, all_live: bool) -> BlockResult:
    """Attention for every query row, then merge (ToMe) or fuse (EViT), then the MLP on the survivors."""
    x, alive, positions, protected = state.x, state.alive, state.positions, state.protected
    linears = settings.linears
    rows = rows_read(merge.query_rows, settings)
    if rows is None:
        probs, keys, v = attention_parts(block, h, alive, linears, attn_bias, all_live)  # [B,H,N,N], [B,H,N,Dh] x2
        context = torch.matmul(attn_drop(block, probs), v)  # [B, H, N, Dh]
        batch, _, n, _ = context.shape
        mid = attention_branch(block, x, context.transpose(1, 2).reshape(batch, n, -1), linears)  # [B, N, D]
    else:  # the merge reads ``rows`` query rows of the probabilities at most: fused attention for the context
        q, keys, v, probs = leading_rows_attention(block, h, alive, linears, attn_bias, all_live, rows)
        context = fused_context(block, q, keys, v, alive, attn_bias, all_live, settings.traceable)  # [B, N, D]
        mid = attention_branch(block, x, context, linears)
    sizes = alive.to(x.dtype) if state.sizes is None else state.sizes  # [B, N]
    plan = merge(AttentionState(probs=probs, keys=keys, hidden=mid, alive=alive, sizes=sizes))
    if plan is None:
        out = mlp_residual(block, mid, linears)
        return BlockResult(TokenState(out, alive, positions, None, sizes, n_in, all_live, protected), n_in, n_in)
    # merges are not pruning decisions: a protected token may be merged away, so protection ends here
    merged, sizes = merge_tokens(mid, sizes, plan)  # [B, N, D], [B, N]
    if plan.source is not None:  # the plan moved survivors between slots: each slot keeps its token's position
        positions = positions.gather(1, plan.source)
    keep = plan.keep & alive
    n_out = keep.sum(dim=1).to(x.dtype)
    width = static_width(merge, state, settings, all_live) if settings.packed else None
    if width is not None:  # a fixed count on full rows: a width known from the shapes, no padding
        index = kept_first(keep, width)  # [B, width]
        keep = torch.ones(index.shape, dtype=torch.bool, device=index.device)
        merged, sizes, positions = (gather_tokens(t, index) for t in (merged, sizes, positions))
    elif settings.packed:
        index, keep = packing_index(keep)  # [B, M]
        if torch.compiler.is_compiling():  # prefix tokens are never merged away: M >= 1
            torch._check(index.shape[1] > 0)
        merged, sizes, positions = (gather_tokens(t, index) for t in (merged, sizes, positions))
    out = mlp_residual(block, merged, linears) * keep[..., None].to(merged.dtype)  # [B, M, D]
    extra = None if plan.macs is None else plan.macs.to(x.dtype)
    return BlockResult(TokenState(out, keep, positions, None, sizes * keep.to(sizes.dtype), n_out,
                                  True if width is not None else None), n_in, n_out, n_rows=n_in, extra_macs=extra)
