"""A model-independent view of one transformer block, and the block step that prunes inside it.

Adapters describe each block of their model family as a :class:`BlockView` (references to the
model's own modules, no copies); :func:`run_block` executes it with explicit attention so that the
probabilities are available for scoring, and removes or masks tokens right after the softmax. A block with
nothing to decide or merge runs fused attention instead (no [B, H, N, N] tensor).

Token reduction has two hooks, both per block: a *decision* right after the softmax (pruning: LTP, top-k,
SaiT; dropped tokens skip the rest of the block) and a *merge* between the attention and the MLP (ToMe,
EViT: every token gets its attention output, then tokens are merged or fused and the MLP sees fewer). An
optional additive key bias ([B, N], e.g. ToMe's log token sizes) enters the attention logits.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.core.linear_kernel import cached_for, linear, packed_linear, tensor_stamp
from trimformer.core.merging import MergePlan, merge_tokens
from trimformer.core.packing import gather_tokens, kept_counts, packing_index


@dataclass
class BlockView:
    """References to the sub-modules of one transformer block.

    ``pre_norm`` False is BERT's order (x = LN(x + Attn(x)); x = LN(x + MLP(x))); True is ViT's
    (x = x + Attn(LN(x)); x = x + MLP(LN(x))), with optional LayerScale modules.
    """

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    mlp_in: nn.Linear
    mlp_out: nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    norm_attn: nn.Module
    norm_mlp: nn.Module
    num_heads: int
    pre_norm: bool = False
    attn_dropout: nn.Module | float | None = None  # a module, or a probability applied functionally
    hidden_dropout: nn.Module | None = None
    attn_out_dropout: nn.Module | None = None
    layer_scale_attn: nn.Module | None = None
    layer_scale_mlp: nn.Module | None = None
    residual_drop: nn.Module | None = None  # stochastic depth on each residual branch (pre-norm blocks)

    @property
    def hidden_size(self) -> int:
        return self.query.in_features

    @property
    def mlp_size(self) -> int:
        return self.mlp_in.out_features


def _drop(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    if module is None or (isinstance(module, nn.Dropout) and not module.training):  # skip the no-op call
        return x
    return module(x)


def _attn_drop(block: BlockView, probs: torch.Tensor) -> torch.Tensor:
    if isinstance(block.attn_dropout, float):
        p = _attn_dropout_p(block)
        return F.dropout(probs, p) if p > 0 else probs
    return _drop(block.attn_dropout, probs)


def _keys_need_mask(key_mask: torch.Tensor, all_live: bool | None) -> bool:
    """Whether some key is dead or padded; ``all_live`` answers without reading ``key_mask`` when known."""
    return not (bool(key_mask.all()) if all_live is None else all_live)


def attention_probs(block: BlockView, h: torch.Tensor, key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention probabilities and values.

    h: [B, N, D] (already normalised for pre-norm blocks); key_mask: bool [B, N].
    Returns probs [B, H, N, N] (before dropout) and values [B, H, N, Dh].
    """
    probs, _, v = attention_parts(block, h, key_mask)
    return probs, v


def attention_parts(block: BlockView, h: torch.Tensor, key_mask: torch.Tensor,
                    key_bias: torch.Tensor | None = None,
                    all_live: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax attention probabilities, keys and values, with an optional additive bias per key.

    h: [B, N, D]; key_mask: bool [B, N]; key_bias: [B, N] added to every query's logits (ToMe: log sizes);
    all_live: whether every key is live, when the caller knows (None: read from ``key_mask``).
    Returns probs [B, H, N, N] (before dropout), keys [B, H, N, Dh] and values [B, H, N, Dh].
    """
    q, k, v = scaled_qkv(block, h)  # [B, H, N, Dh] each; q carries the 1/sqrt(Dh) scale
    return _softmax_probs(q, k, key_mask, key_bias, all_live), k, v


def _softmax_probs(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, key_bias: torch.Tensor | None,
                   all_live: bool | None) -> torch.Tensor:
    """Attention probabilities of scaled queries q and keys k ([B, H, N, Dh] each) -> [B, H, N, N]."""
    logits = torch.matmul(q, k.transpose(-1, -2))  # [B, H, N, N]
    if key_bias is not None:
        logits = logits + key_bias.to(logits.dtype)[:, None, None, :]
    if _keys_need_mask(key_mask, all_live):  # dead or padded keys get no attention
        bias = torch.zeros(key_mask.shape, dtype=logits.dtype, device=logits.device)
        bias.masked_fill_(~key_mask, torch.finfo(logits.dtype).min)
        logits.add_(bias[:, None, None, :])
    return torch.softmax(logits, dim=-1)


_FUSED_ATTENTION = [True]

# Largest [b, H, N, N] probability block that a deciding block materialises at once at inference (packed or
# masked). Bigger batches run their attention (softmax, decision, value mixing) in row chunks, so each chunk
# stays in the CPU cache instead of streaming a [B, H, N, N] tensor through memory several times (at batch 32,
# 12 heads and 128 tokens the whole-batch softmax path takes over twice as long as the same work in chunks).
ATTENTION_CHUNK_BYTES = 2 << 20


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Run every block with explicit attention, also those that need no probabilities (e.g. to count FLOPs
    with ``torch.utils.flop_counter``, which does not see the fused CPU kernel)."""
    previous = _FUSED_ATTENTION[0]
    _FUSED_ATTENTION[0] = False
    try:
        yield
    finally:
        _FUSED_ATTENTION[0] = previous


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, D] -> [B, H, N, Dh]."""
    batch, n, d = x.shape
    return x.view(batch, n, heads, d // heads).transpose(1, 2)


def _query_scale(block: BlockView) -> float:
    """1/sqrt(head size), folded into the queries."""
    return (block.hidden_size // block.num_heads) ** -0.5


# Inference cache of each block's fused query/key/value projection, keyed by its query module. An entry is
# valid while the six tensors it was built from are unchanged (same storage, same in-place version).
_FUSED_QKV: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fused_qkv_weights(block: BlockView) -> tuple[torch.Tensor, torch.Tensor, tuple] | None:
    """([3D, D], [3D], stamp): weight and bias of query (pre-scaled by 1/sqrt(Dh)), key and value stacked, and
    the stamp of the six tensors they came from; None where they are not stacked (no plain ``nn.Linear`` with a
    bias, e.g. quantized layers; weights created under ``torch.inference_mode``, which keep no version counter)."""
    linears = (block.query, block.key, block.value)
    if any(type(lin) is not nn.Linear or lin.bias is None for lin in linears):
        return None
    stamp = tensor_stamp(*(t for lin in linears for t in (lin.weight, lin.bias)))
    if stamp is None:
        return None

    def stack() -> tuple[torch.Tensor, torch.Tensor]:
        scale = _query_scale(block)
        with torch.no_grad():
            weight = torch.cat([block.query.weight * scale, block.key.weight, block.value.weight])  # [3D, D]
            bias = torch.cat([block.query.bias * scale, block.key.bias, block.value.bias])  # [3D]
        return weight, bias

    weight, bias = cached_for(_FUSED_QKV, block.query, stamp, stack)
    return weight, bias, stamp


def scaled_qkv(block: BlockView, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query (scaled by 1/sqrt(Dh)), key and value heads of ``h``: [B, N, D] -> [B, H, N, Dh] each.

    Without gradients the three projections run as one matmul over cached stacked weights (fewer, larger
    operations: it matters at batch 1); with gradients, or for layers that cannot be stacked, one by one.
    """
    heads = block.num_heads
    fused = None if torch.is_grad_enabled() else _fused_qkv_weights(block)
    if fused is None:
        q = block.query(h) * _query_scale(block)  # scaling q is cheaper than scaling [B, H, N, N]
        return _split_heads(q, heads), _split_heads(block.key(h), heads), _split_heads(block.value(h), heads)
    batch, n, d = h.shape
    weight, bias, stamp = fused
    # the stacked weight's packing is cached under the query module (which never runs alone at inference)
    qkv = packed_linear(h, weight, bias, block.query, stamp).view(batch, n, 3, heads, d // heads)  # [B, N, 3, H, Dh]
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, Dh] each
    return q, k, v


def _attn_dropout_p(block: BlockView) -> float:
    """Probability of the attention-probability dropout now (0 in eval mode)."""
    if not block.query.training or block.attn_dropout is None:
        return 0.0
    if isinstance(block.attn_dropout, float):
        return block.attn_dropout
    return float(getattr(block.attn_dropout, "p", 0.0)) if block.attn_dropout.training else 0.0


def fused_block(block: BlockView, x: torch.Tensor, h: torch.Tensor, key_mask: torch.Tensor,
                key_bias: torch.Tensor | None = None, all_live: bool | None = None,
                live: torch.Tensor | None = None) -> torch.Tensor:
    """A whole block with fused attention (``F.scaled_dot_product_attention``), for blocks that need no
    probabilities: same result as the explicit path up to float rounding, without the [B, H, N, N] tensor.

    x: [B, N, D] residual input; h: [B, N, D] attention input (normalised for pre-norm); key_mask: bool
    [B, N]; key_bias: [B, N] additive logit bias per key; all_live: as in :func:`attention_parts`; live: as in
    :func:`per_token_half` -> [B, N, D].
    """
    q, k, v = scaled_qkv(block, h)  # [B, H, N, Dh] each; q carries the 1/sqrt(Dh) scale
    return per_token_half(block, x, fused_context(block, q, k, v, key_mask, key_bias, all_live), live)


def fused_context(block: BlockView, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                  key_bias: torch.Tensor | None = None, all_live: bool | None = None) -> torch.Tensor:
    """Attention context with ``F.scaled_dot_product_attention``, heads merged: scaled queries q [B, H, M, Dh]
    (any M query rows), keys and values [B, H, N, Dh], key_mask bool [B, N], key_bias [B, N] -> [B, M, D]."""
    mask = None
    if key_bias is not None or _keys_need_mask(key_mask, all_live):
        mask = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)  # [B, N]
        if key_bias is not None:
            mask = mask + key_bias.to(q.dtype)
        mask = mask.masked_fill(~key_mask, torch.finfo(q.dtype).min)[:, None, None, :]  # [B, 1, 1, N]
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=_attn_dropout_p(block),
                                             scale=1.0)  # [B, H, M, Dh]
    batch, _, m, _ = context.shape
    return context.transpose(1, 2).reshape(batch, m, -1)


def _chunk_rows(batch: int, heads: int, n: int, itemsize: int) -> int:
    """Rows per attention chunk under :data:`ATTENTION_CHUNK_BYTES` (at least 1; ``batch``: one chunk)."""
    return max(1, min(batch, ATTENTION_CHUNK_BYTES // max(1, heads * n * n * itemsize)))


def decide_and_mix(block: BlockView, h: torch.Tensor, alive: torch.Tensor, decide: Decide | None,
                   key_bias: torch.Tensor | None = None, all_live: bool | None = None,
                   chunked: bool = False) -> tuple[object, torch.Tensor]:
    """Explicit attention of a deciding block: the decision on its probabilities and the attention context.

    h: [B, N, D] (normalised for pre-norm); alive: bool [B, N]. Returns (what ``decide`` returned: a keep
    mask [B, N], soft weights, a :class:`StraightThroughKeep` or None; context [B, N, D] = dropout(probs) @ v
    with heads merged). ``chunked`` runs softmax, decision and mixing in row chunks of at most
    :data:`ATTENTION_CHUNK_BYTES` of probabilities (decisions are per row; used for inference only, where no
    policy records whole batches); the projections always run on the whole batch.
    """
    batch, n, d = h.shape
    q, k, v = scaled_qkv(block, h)  # [B, H, N, Dh] each
    rows = _chunk_rows(batch, block.num_heads, n, h.element_size()) if chunked else batch
    if rows < batch and all_live is None:
        all_live = bool(alive.all())  # read the mask once, not once per chunk
    keeps, contexts = [], []
    for qc, kc, vc, live, bias in _row_chunks(rows, q, k, v, alive, key_bias):
        probs = _softmax_probs(qc, kc, live, bias, all_live)  # [b, H, N, N]
        keeps.append(_call_decide(decide, probs, live, vc, all_live))
        contexts.append(torch.matmul(_attn_drop(block, probs), vc))  # [b, H, N, Dh]
    context = contexts[0] if len(contexts) == 1 else torch.cat(contexts)
    return _join_keeps(keeps), context.transpose(1, 2).reshape(batch, n, d)


def _row_chunks(rows: int, *tensors: torch.Tensor | None) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """The tensors (batch first, or None) in chunks of ``rows`` batch rows; one chunk is the tensors themselves
    (no slicing: at batch 1 every operation counts)."""
    batch = tensors[0].shape[0]
    if rows >= batch:
        yield tensors
        return
    for start in range(0, batch, rows):
        yield tuple(None if t is None else t[start:start + rows] for t in tensors)


ContextOf = Callable[[torch.Tensor | None], torch.Tensor]


def _rows_read(hook: Callable) -> int | None:
    """How many leading query rows of the probabilities a decision or merge reads (:func:`reads_query_rows`);
    None: all of them, or fused attention is switched off (:func:`explicit_attention`)."""
    return getattr(hook, "query_rows", None) if _FUSED_ATTENTION[0] else None


def _leading_rows_attention(block: BlockView, h: torch.Tensor, alive: torch.Tensor, key_bias: torch.Tensor | None,
                            all_live: bool | None, rows: int) -> tuple[torch.Tensor, ...]:
    """Scaled q, k, v of ``h`` ([B, H, N, Dh] each) and the probabilities of the first ``rows`` query rows
    ([B, H, rows, N]; None when ``rows`` is 0)."""
    q, k, v = scaled_qkv(block, h)
    probs = _softmax_probs(q[:, :, :rows], k, alive, key_bias, all_live) if rows else None
    return q, k, v, probs


def decide_with_context(block: BlockView, h: torch.Tensor, alive: torch.Tensor, decide: Decide,
                        key_bias: torch.Tensor | None = None, all_live: bool | None = None,
                        chunked: bool = False) -> tuple[object, ContextOf]:
    """The decision of a deciding block, and ``context_of(index)``: the attention context of the query rows
    ``index`` (long [B, M] -> [B, M, D]; None: every row, [B, N, D]).

    A decision marked :func:`reads_query_rows` sees the probabilities of its first query rows only ([B, H, r, N]),
    and the context comes from fused attention for just the rows asked for: no [B, H, N, N] tensor, and no
    attention work for the rows that a packed block drops. Any other decision sees every row
    (:func:`decide_and_mix`) and the context is gathered from the full one.
    """
    rows = _rows_read(decide)
    if rows is None:
        keep, context = decide_and_mix(block, h, alive, decide, key_bias, all_live, chunked)  # context [B, N, D]
        return keep, lambda index: context if index is None else gather_tokens(context, index)
    q, k, v, probs = _leading_rows_attention(block, h, alive, key_bias, all_live, rows)
    keep = _call_decide(decide, probs, alive, v, all_live)

    def context_of(index: torch.Tensor | None) -> torch.Tensor:
        queries = q if index is None else gather_tokens(q, index, dim=2)  # [B, H, M, Dh]
        return fused_context(block, queries, k, v, alive, key_bias, all_live)

    return keep, context_of


def _join_keeps(keeps: list) -> object:
    """The decisions of the row chunks as one batch decision."""
    if len(keeps) == 1 or keeps[0] is None:
        return keeps[0]
    if isinstance(keeps[0], StraightThroughKeep):
        return StraightThroughKeep(torch.cat([kp.hard for kp in keeps]), torch.cat([kp.gate for kp in keeps]))
    return torch.cat(keeps)


def finish_kept_rows(block: BlockView, x: torch.Tensor, kept_context: torch.Tensor, index: torch.Tensor,
                     live: torch.Tensor | None = None) -> torch.Tensor:
    """Rest of the block for the query rows ``index`` only (packed execution).

    x: [B, N, D]; kept_context: [B, M, D] attention context of those rows; index: long [B, M]; live: as in
    :func:`per_token_half` -> [B, M, D].
    """
    if x.shape[0] == 1 and index.shape[1] == x.shape[1]:  # one row that keeps every token: nothing to gather
        return per_token_half(block, x, kept_context, live)
    return per_token_half(block, gather_tokens(x, index), kept_context, live)  # [B, M, D]


# A batch is padded to its longest row. Where the padding fills at least this share of a block's slots, the
# per-token half of the block (output projection, norms, MLP: most of its work) runs on the live slots only.
# Gathering them and scattering the result back costs a few passes over [T, D] per block, against a per-token
# MLP of about 9 D^2 multiply-adds: worth it from a few percent of padding.
COMPACT_MIN_PADDING = 0.1


def per_token_half(block: BlockView, x: torch.Tensor, context: torch.Tensor,
                   live: torch.Tensor | None = None) -> torch.Tensor:
    """x plus the projected attention context, then the MLP (with the norms of the block): [B, M, D] x2 -> [B, M, D].

    ``live`` (bool [B, M], given at CPU inference for a batch with padding): the padding slots come out zero, and
    where they fill at least :data:`COMPACT_MIN_PADDING` of the slots, only the live ones are computed.
    """
    if live is None:
        return mlp_residual(block, _attention_branch(block, x, context))
    batch, m, d = x.shape
    slots = live.view(-1).nonzero().view(-1)  # [T] live slots of the flattened batch
    if slots.shape[0] > (1 - COMPACT_MIN_PADDING) * batch * m:  # little padding: run it, then zero it
        return mlp_residual(block, _attention_branch(block, x, context)) * live[..., None].to(x.dtype)
    x_live = x.reshape(batch * m, d).index_select(0, slots)[None]  # [1, T, D]
    context_live = context.reshape(batch * m, d).index_select(0, slots)[None]  # [1, T, D]
    out = mlp_residual(block, _attention_branch(block, x_live, context_live))  # [1, T, D]
    return x.new_zeros(batch * m, d).index_copy_(0, slots, out[0]).view(batch, m, d)


def attention_residual(block: BlockView, x: torch.Tensor, h_probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """First half of the block: x plus the attention branch (then LN for post-norm blocks).

    x: [B, M, D]; h_probs: [B, H, M, N]; v: [B, H, N, Dh] -> [B, M, D].
    """
    batch, _, m, _ = h_probs.shape
    probs = _attn_drop(block, h_probs)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, m, -1)  # [B, M, D]
    return _attention_branch(block, x, context)


def _attention_branch(block: BlockView, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """x plus the projected attention context (then LN for post-norm blocks). [B, M, D] x2 -> [B, M, D]."""
    attn = _drop(block.attn_out_dropout, linear(block.attn_out, context))
    if block.pre_norm:
        if block.layer_scale_attn is not None:
            attn = block.layer_scale_attn(attn)
        return x + _drop(block.residual_drop, attn)
    return block.norm_attn(x + attn)


def _mlp(block: BlockView, x: torch.Tensor) -> torch.Tensor:
    """The MLP branch: [B, M, D] -> [B, M, D]."""
    return linear(block.mlp_out, block.activation(linear(block.mlp_in, x)))


def mlp_residual(block: BlockView, x: torch.Tensor) -> torch.Tensor:
    """Second half of the block: x plus the MLP branch (then LN for post-norm blocks). [B, M, D] -> [B, M, D]."""
    if block.pre_norm:
        mlp = _drop(block.hidden_dropout, _mlp(block, block.norm_mlp(x)))
        if block.layer_scale_mlp is not None:
            mlp = block.layer_scale_mlp(mlp)
        return x + _drop(block.residual_drop, mlp)
    mlp = _drop(block.hidden_dropout, _mlp(block, x))
    return block.norm_mlp(x + mlp)


@dataclass
class BlockResult:
    """Output of one block step."""

    hidden: torch.Tensor  # [B, M, D]
    alive: torch.Tensor  # bool [B, M]: live tokens of the output
    positions: torch.Tensor  # long [B, M]: original position of each output slot
    soft_keep: torch.Tensor | None  # [B, M] cumulative soft keep weight (soft stage only)
    n_in: torch.Tensor  # [B] live tokens that entered the block (soft: expected count)
    n_out: torch.Tensor  # [B] tokens kept after the block's decision (soft: expected count)
    sizes: torch.Tensor | None = None  # [B, M] original tokens each slot stands for (once a merge happened)
    n_rows: torch.Tensor | None = None  # [B] query rows given an attention output; None: n_out (pruning)
    extra_macs: torch.Tensor | None = None  # [B] MACs of the merge decision itself (ToMe's similarities)
    all_live: bool | None = None  # every slot of ``alive`` is True (None: not known without reading it)


Decide = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def reads_query_rows(decide: Callable, rows: int) -> Callable:
    """Mark a decision (or merge) function that reads only the first ``rows`` query rows of the probabilities
    (class attention: 1; ToMe, which reads keys: 0); its block then computes just those rows explicitly and the
    attention context fused (see :func:`decide_with_context`)."""
    decide.query_rows = rows  # type: ignore[attr-defined]
    return decide


def with_values(decide: Callable) -> Callable:
    """Mark a decision function that also takes the attention values: ``decide(probs, alive, values [B, H, N, Dh])``."""
    decide.wants_values = True  # type: ignore[attr-defined]
    return decide


def live_mask_optional(decide: Callable) -> Callable:
    """Mark a decision function that takes ``alive=None`` to mean that every token is live; its block passes None
    whenever it knows so (e.g. every packed row at batch 1), which spares reading and weighting by the mask."""
    decide.live_mask_optional = True  # type: ignore[attr-defined]
    return decide


@dataclass
class StraightThroughKeep:
    """A hard decision that passes a gradient (straight-through estimator), returned by a decision function.

    Tokens are removed or masked by ``hard`` exactly as for a bool mask; the kept outputs are multiplied by
    ``gate``, which is 1 there in value and carries the gradient of a soft mask.
    """

    hard: torch.Tensor  # bool [B, N]
    gate: torch.Tensor  # float [B, N]


def _call_decide(decide: Decide | None, probs: torch.Tensor, alive: torch.Tensor, values: torch.Tensor,
                 all_live: bool | None = None):
    if decide is None:
        return None
    if all_live and getattr(decide, "live_mask_optional", False):
        alive = None  # every token is live: see live_mask_optional
    return decide(probs, alive, values) if getattr(decide, "wants_values", False) else decide(probs, alive)


@dataclass
class AttentionState:
    """What a merge hook sees, after the attention residual and before the MLP."""

    probs: torch.Tensor | None  # [B, H, N, N] post-softmax attention (before dropout); [B, H, r, N], the first r
    # query rows only, for a merge marked reads_query_rows(merge, r) (None for r = 0)
    keys: torch.Tensor  # [B, H, N, Dh]
    hidden: torch.Tensor  # [B, N, D] block state after the attention residual
    alive: torch.Tensor  # bool [B, N]
    sizes: torch.Tensor  # [B, N] original tokens each slot stands for (1 before any merge, 0 when dead)


Merge = Callable[[AttentionState], MergePlan | None]


def run_block(
    block: BlockView,
    x: torch.Tensor,
    alive: torch.Tensor,
    positions: torch.Tensor,
    decide: Decide | None,
    packed: bool,
    soft_keep: torch.Tensor | None = None,
    *,
    merge: Merge | None = None,
    sizes: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    n_live: torch.Tensor | None = None,
    all_live: bool | None = None,
    chunked: bool = False,
    compact: bool = False,
) -> BlockResult:
    """One block with a pruning decision made right after the attention softmax, or a merge before the MLP.

    x: [B, N, D]; alive: bool [B, N]; positions: long [B, N].
    ``decide(probs, alive)`` returns a bool keep mask [B, N] (hard) or a float keep weight (soft);
    None means no pruning. ``packed`` removes dropped tokens; otherwise they stay, zeroed and masked
    out of later attention (the official LTP behaviour). Soft weights never remove tokens.
    A decision marked :func:`with_values` also gets the values; it may return a :class:`StraightThroughKeep`.
    ``merge(state)`` returns a :class:`MergePlan` (or None) applied between attention and MLP; ``sizes``
    [B, N] counts the original tokens behind each slot (None: all 1); ``attn_bias`` [B, N] is added to
    the attention logits of each key. A block takes a decision or a merge, not both.
    ``n_live`` ([B], float) and ``all_live`` pass on what the previous block's :class:`BlockResult` already
    knows about ``alive`` (its ``n_out`` and ``all_live``), which saves reading it again. ``chunked``
    (inference without a policy capture) lets a deciding block run its attention in row chunks
    (:func:`decide_and_mix`). ``compact`` (packed CPU inference) runs the per-token half of a block with much
    padding on its live slots only (:func:`per_token_half`).
    """
    h = block.norm_attn(x) if block.pre_norm else x
    n_in = alive.sum(dim=1).to(x.dtype) if n_live is None else n_live
    all_live = bool(alive.all()) if all_live is None else all_live
    if decide is None and merge is None and soft_keep is None and _FUSED_ATTENTION[0]:  # no probabilities needed
        out = fused_block(block, x, h, alive, attn_bias, all_live, alive if compact and not all_live else None)
        return BlockResult(out, alive, positions, None, n_in, n_in, sizes=sizes, all_live=all_live)
    if merge is not None:
        if decide is not None or soft_keep is not None:
            raise ValueError("a block takes either a pruning decision or a merge, not both (and no soft stage)")
        rows = _rows_read(merge)
        if rows is None:
            probs, keys, v = attention_parts(block, h, alive, attn_bias, all_live)  # [B, H, N, N], [B, H, N, Dh] x2
            mid = attention_residual(block, x, probs, v)  # [B, N, D]: every query row
        else:  # the merge reads ``rows`` query rows of the probabilities at most: fused attention for the context
            q, keys, v, probs = _leading_rows_attention(block, h, alive, attn_bias, all_live, rows)
            mid = _attention_branch(block, x, fused_context(block, q, keys, v, alive, attn_bias, all_live))
        return _merge_step(block, x, alive, positions, probs, keys, mid, merge, packed, sizes, n_in)
    keep, context_of = decide_with_context(block, h, alive, decide, attn_bias, all_live, chunked)
    gate = None
    if isinstance(keep, StraightThroughKeep):
        keep, gate = keep.hard, keep.gate  # [B, N] each

    if keep is None:
        out = mlp_residual(block, _attention_branch(block, x, context_of(None)))
        return BlockResult(out, alive, positions, soft_keep, n_in, n_in, sizes=sizes, all_live=all_live)

    if keep.dtype != torch.bool:  # soft stage: scale outputs by the cumulative keep weight
        weight = keep * alive.to(keep.dtype) if soft_keep is None else keep * soft_keep
        out = mlp_residual(block, _attention_branch(block, x, context_of(None))) * weight[..., None]
        n_soft_in = n_in if soft_keep is None else soft_keep.sum(dim=1)
        return BlockResult(out, alive, positions, weight, n_soft_in, weight.sum(dim=1), sizes=sizes)

    if not all_live:
        keep = keep & alive
    if not packed:
        n_out = keep.sum(dim=1).to(x.dtype)
        weight = keep.to(x.dtype) if gate is None else keep.to(x.dtype) * gate  # [B, N]
        out = mlp_residual(block, _attention_branch(block, x, context_of(None))) * weight[..., None]
        kept_sizes = None if sizes is None else sizes * keep.to(sizes.dtype)
        return BlockResult(out, keep, positions, None, n_in, n_out, sizes=kept_sizes)

    index, packed_alive = packing_index(keep)  # [B, M]
    n_out = kept_counts(keep, index, x.dtype)
    padded = index.shape[0] > 1  # one packed row has no padding
    out = finish_kept_rows(block, x, context_of(index), index, packed_alive if compact and padded else None)
    if padded and not compact:  # zero the padding slots (per_token_half did where compact)
        out = out * packed_alive[..., None].to(out.dtype)
    if gate is not None:
        out = out * gather_tokens(gate, index)[..., None]
    kept_sizes = None if sizes is None else gather_tokens(sizes, index) * packed_alive.to(sizes.dtype)
    return BlockResult(out, packed_alive, gather_tokens(positions, index), None, n_in, n_out, sizes=kept_sizes,
                       all_live=True if out.shape[0] == 1 else None)  # one packed row has no padding


def _merge_step(block: BlockView, x: torch.Tensor, alive: torch.Tensor, positions: torch.Tensor,
                probs: torch.Tensor | None, keys: torch.Tensor, mid: torch.Tensor, merge: Merge, packed: bool,
                sizes: torch.Tensor | None, n_in: torch.Tensor) -> BlockResult:
    """After the attention residual ``mid`` ([B, N, D], every query row): merge (ToMe) or fuse (EViT), then the
    MLP on the survivors."""
    sizes = alive.to(x.dtype) if sizes is None else sizes  # [B, N]
    plan = merge(AttentionState(probs=probs, keys=keys, hidden=mid, alive=alive, sizes=sizes))
    if plan is None:
        return BlockResult(mlp_residual(block, mid), alive, positions, None, n_in, n_in, sizes=sizes)
    merged, sizes = merge_tokens(mid, sizes, plan)  # [B, N, D], [B, N]
    keep = plan.keep & alive
    n_out = keep.sum(dim=1).to(x.dtype)
    if packed:
        index, keep = packing_index(keep)  # [B, M]
        merged, sizes, positions = (gather_tokens(t, index) for t in (merged, sizes, positions))
    out = mlp_residual(block, merged) * keep[..., None].to(merged.dtype)  # [B, M, D]
    extra = None if plan.macs is None else plan.macs.to(x.dtype)
    return BlockResult(out, keep, positions, None, n_in, n_out, sizes=sizes * keep.to(sizes.dtype),
                       n_rows=n_in, extra_macs=extra)
