"""Attention variants of the block step: explicit probabilities (for decisions), fused attention (for blocks
that need none), leading query rows only (for decisions that read class attention), and row chunks.

Every query tensor here carries the 1/sqrt(Dh) scale already (scaling q is cheaper than scaling [B, H, N, N]).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.core.packing import gather_tokens
from trimformer.engine.hooks import Decision, Keep, StraightThroughKeep
from trimformer.engine.linears import Linears, tensor_stamp
from trimformer.engine.settings import StepSettings
from trimformer.engine.view import BlockView

ContextOf = Callable[[torch.Tensor | None], torch.Tensor]


def keys_need_mask(key_mask: torch.Tensor, all_live: bool | None) -> bool:
    """Whether some key is dead or padded; ``all_live`` answers without reading ``key_mask`` when known."""
    return not (bool(key_mask.all()) if all_live is None else all_live)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, D] -> [B, H, N, Dh]."""
    batch, n, d = x.shape
    return x.view(batch, n, heads, d // heads).transpose(1, 2)


def attn_dropout_p(block: BlockView) -> float:
    """Probability of the attention-probability dropout now (0 in eval mode)."""
    if not block.training or block.attn_dropout is None:
        return 0.0
    if isinstance(block.attn_dropout, float):
        return block.attn_dropout
    return float(getattr(block.attn_dropout, "p", 0.0)) if block.attn_dropout.training else 0.0


def drop(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, skipping absent modules and dropout in eval mode (no no-op call)."""
    if module is None or (isinstance(module, nn.Dropout) and not module.training):
        return x
    return module(x)


def attn_drop(block: BlockView, probs: torch.Tensor) -> torch.Tensor:
    """Dropout on attention probabilities, as the block's model applies it."""
    if isinstance(block.attn_dropout, float):
        p = attn_dropout_p(block)
        return F.dropout(probs, p) if p > 0 else probs
    return drop(block.attn_dropout, probs)


def _stacked_qkv_weights(block: BlockView,
                         linears: Linears) -> tuple[torch.Tensor, torch.Tensor, tuple | None] | None:
    """([3D, D], [3D], stamp): query (pre-scaled), key and value weights and biases stacked, cached while the six
    tensors are unchanged; None where they cannot be stacked (no plain ``nn.Linear`` with a bias, e.g. quantized
    layers; weights created under ``torch.inference_mode``, which keep no version counter)."""
    projections = (block.query, block.key, block.value)
    if any(type(lin) is not nn.Linear or lin.bias is None for lin in projections):
        return None

    def stack() -> tuple[torch.Tensor, torch.Tensor]:
        scale = block.query_scale
        with torch.no_grad():
            weight = torch.cat([block.query.weight * scale, block.key.weight, block.value.weight])  # [3D, D]
            bias = torch.cat([block.query.bias * scale, block.key.bias, block.value.bias])  # [3D]
        return weight, bias

    if linears.traceable:  # in the graph (an exporter folds it into one constant)
        return (*stack(), None)
    stamp = tensor_stamp(*(t for lin in projections for t in (lin.weight, lin.bias)))
    if stamp is None:
        return None
    weight, bias = linears.cache.get(block.query, stamp, stack, kind="qkv")
    return weight, bias, stamp


def _fused_qkv_weights(block: BlockView, qkv: nn.Linear,
                       linears: Linears) -> tuple[torch.Tensor, torch.Tensor | None, tuple] | None:
    """([3D, D], [3D] or None, stamp): the fused projection's weight and bias with the query rows pre-scaled,
    cached under ``qkv`` while its tensors are unchanged; None where that cannot be told (inference tensors).

    The stamp returned (for the oneDNN packing, also kept under ``qkv``) is marked as the scaled copy's, so a
    packing of the module's own weight (same tensors, same stamp) is never taken for it.
    """
    stamp = None if linears.traceable else \
        tensor_stamp(qkv.weight) if qkv.bias is None else tensor_stamp(qkv.weight, qkv.bias)
    if stamp is None and not linears.traceable:
        return None

    def scaled() -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = qkv.out_features // 3  # the query rows
        with torch.no_grad():
            weight = qkv.weight.detach().clone()  # [3D, D]
            weight[:rows] *= block.query_scale
            bias = None if qkv.bias is None else qkv.bias.detach().clone()  # [3D]
            if bias is not None:
                bias[:rows] *= block.query_scale
        return weight, bias

    if linears.traceable:  # in the graph (an exporter folds it into one constant)
        return (*scaled(), None)
    weight, bias = linears.cache.get(qkv, stamp, scaled, kind="qkv")
    return weight, bias, (*stamp, "q-scaled")


def _split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, 3D] ([q | k | v] along the last dim) -> q, k, v [B, H, N, Dh] each (views, no copy)."""
    batch, n, d3 = qkv.shape
    parts = qkv.view(batch, n, 3, heads, d3 // (3 * heads))  # [B, N, 3, H, Dh]
    q, k, v = parts.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, Dh] each
    return q, k, v


def _fused_scaled_qkv(block: BlockView, qkv: nn.Module, h: torch.Tensor,
                      linears: Linears) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`scaled_qkv` of a block with a fused ``qkv`` projection: one matmul in every case.

    Without gradients, for a plain ``nn.Linear``, over the cached copy with pre-scaled query rows (through
    ``linears``: the oneDNN packing where it applies); otherwise (gradients, quantized or other layers) the module
    itself, then the queries scaled.
    """
    fused = None if torch.is_grad_enabled() or type(qkv) is not nn.Linear else _fused_qkv_weights(block, qkv, linears)
    if fused is None:
        q, k, v = _split_qkv(qkv(h), block.num_heads)  # [B, H, N, Dh] each
        return q * block.query_scale, k, v
    weight, bias, stamp = fused
    return _split_qkv(linears.stacked(h, weight, bias, qkv, stamp), block.num_heads)  # [B, H, N, Dh] each


def scaled_qkv(block: BlockView, h: torch.Tensor, linears: Linears) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query (scaled by 1/sqrt(Dh)), key and value heads of ``h``: [B, N, D] -> [B, H, N, Dh] each.

    A block with a fused ``qkv`` projection runs it (:func:`_fused_scaled_qkv`). Otherwise, without gradients
    the three projections run as one matmul over cached stacked weights (fewer, larger operations: it matters at
    batch 1); with gradients, or for layers that cannot be stacked, one by one.
    """
    if block.qkv is not None:
        return _fused_scaled_qkv(block, block.qkv, h, linears)
    heads = block.num_heads
    stacked = None if torch.is_grad_enabled() else _stacked_qkv_weights(block, linears)
    if stacked is None:
        q = block.query(h) * block.query_scale
        return split_heads(q, heads), split_heads(block.key(h), heads), split_heads(block.value(h), heads)
    weight, bias, stamp = stacked
    # the stacked weight's packing is cached under the query module (which never runs alone at inference)
    return _split_qkv(linears.stacked(h, weight, bias, block.query, stamp), heads)  # [B, H, N, Dh] each


def softmax_probs(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, key_bias: torch.Tensor | None,
                  all_live: bool | None) -> torch.Tensor:
    """Attention probabilities of scaled queries q [B, H, M, Dh] and keys k [B, H, N, Dh] -> [B, H, M, N].

    key_mask: bool [B, N] (dead or padded keys get no attention); key_bias: [B, N] added to every query's logits.
    """
    logits = torch.matmul(q, k.transpose(-1, -2))  # [B, H, M, N]
    if key_bias is not None:
        logits = logits + key_bias.to(logits.dtype)[:, None, None, :]
    if keys_need_mask(key_mask, all_live):
        bias = torch.zeros(key_mask.shape, dtype=logits.dtype, device=logits.device)
        bias.masked_fill_(~key_mask, torch.finfo(logits.dtype).min)
        logits.add_(bias[:, None, None, :])
    return torch.softmax(logits, dim=-1)


def attention_parts(block: BlockView, h: torch.Tensor, key_mask: torch.Tensor, linears: Linears,
                    key_bias: torch.Tensor | None = None,
                    all_live: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities [B, H, N, N] (before dropout), keys and values [B, H, N, Dh] of ``h`` [B, N, D]."""
    q, k, v = scaled_qkv(block, h, linears)
    return softmax_probs(q, k, key_mask, key_bias, all_live), k, v


def fused_context(block: BlockView, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                  key_bias: torch.Tensor | None = None, all_live: bool | None = None,
                  explicit: bool = False) -> torch.Tensor:
    """Attention context with ``F.scaled_dot_product_attention``, heads merged: scaled queries q [B, H, M, Dh]
    (any M query rows), keys and values [B, H, N, Dh], key_mask bool [B, N], key_bias [B, N] -> [B, M, D].

    ``explicit`` (traceable execution): softmax(q k^T) v written out, since the fused kernel's choice of backend
    asks whether a computed row count M is 1, which a compiled graph cannot answer (an ONNX graph has no fused
    attention either)."""
    if explicit:
        probs = softmax_probs(q, k, key_mask, key_bias, all_live)  # [B, H, M, N]
        context = torch.matmul(attn_drop(block, probs), v)  # [B, H, M, Dh]
        batch, _, m, _ = context.shape
        return context.transpose(1, 2).reshape(batch, m, -1)
    mask = None
    if key_bias is not None or keys_need_mask(key_mask, all_live):
        mask = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)  # [B, N]
        if key_bias is not None:
            mask = mask + key_bias.to(q.dtype)
        mask = mask.masked_fill(~key_mask, torch.finfo(q.dtype).min)[:, None, None, :]  # [B, 1, 1, N]
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn_dropout_p(block),
                                             scale=1.0)  # [B, H, M, Dh]
    batch, _, m, _ = context.shape
    return context.transpose(1, 2).reshape(batch, m, -1)


def chunk_rows(batch: int, heads: int, n: int, itemsize: int, budget: int) -> int:
    """Rows per attention chunk whose probabilities fit in ``budget`` bytes (at least 1; 0 budget: ``batch``)."""
    if budget <= 0:
        return batch
    return max(1, min(batch, budget // max(1, heads * n * n * itemsize)))


def row_chunks(rows: int, *tensors: torch.Tensor | None) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """The tensors (batch first, or None) in chunks of ``rows`` batch rows; one chunk is the tensors themselves
    (no slicing: at batch 1 every operation counts)."""
    batch = tensors[0].shape[0]
    if rows >= batch:
        yield tensors
        return
    for start in range(0, batch, rows):
        yield tuple(None if t is None else t[start:start + rows] for t in tensors)


def join_keeps(keeps: list[Keep]) -> Keep:
    """The decisions of the row chunks as one batch decision."""
    if len(keeps) == 1 or keeps[0] is None:
        return keeps[0]
    if isinstance(keeps[0], StraightThroughKeep):
        return StraightThroughKeep(torch.cat([kp.hard for kp in keeps]), torch.cat([kp.gate for kp in keeps]))
    return torch.cat(keeps)


def decide_and_mix(block: BlockView, h: torch.Tensor, alive: torch.Tensor, decide: Decision | None,
                   settings: StepSettings, key_bias: torch.Tensor | None = None,
                   all_live: bool | None = None) -> tuple[Keep, torch.Tensor]:
    """Explicit attention of a deciding block: the decision on its probabilities and the attention context.

    h: [B, N, D] (normalised for pre-norm); alive: bool [B, N]. Returns (the decision; context [B, N, D] =
    dropout(probs) @ v, heads merged). Under a chunk budget (``settings.chunk_bytes``) softmax, decision and
    mixing run in row chunks (decisions are per row); the projections always run on the whole batch.
    """
    batch, n, _ = h.shape
    q, k, v = scaled_qkv(block, h, settings.linears)  # [B, H, N, Dh] each
    rows = chunk_rows(batch, block.num_heads, n, h.element_size(), settings.chunk_bytes)
    if rows < batch and all_live is None:
        all_live = bool(alive.all())  # read the mask once, not once per chunk
    keeps, contexts = [], []
    for qc, kc, vc, live, bias in row_chunks(rows, q, k, v, alive, key_bias):
        probs = softmax_probs(qc, kc, live, bias, all_live)  # [b, H, N, N]
        keeps.append(None if decide is None else decide(probs, live, vc, all_live))
        contexts.append(torch.matmul(attn_drop(block, probs), vc))  # [b, H, N, Dh]
    context = contexts[0] if len(contexts) == 1 else torch.cat(contexts)
    return join_keeps(keeps), context.transpose(1, 2).reshape(batch, n, -1)  # [B, N, H Dh] (H Dh < D: pruned heads)


def leading_rows_attention(block: BlockView, h: torch.Tensor, alive: torch.Tensor, linears: Linears,
                           key_bias: torch.Tensor | None, all_live: bool | None,
                           rows: int) -> tuple[torch.Tensor, ...]:
    """Scaled q, k, v of ``h`` ([B, H, N, Dh] each) and the probabilities of the first ``rows`` query rows
    ([B, H, rows, N]; None when ``rows`` is 0)."""
    q, k, v = scaled_qkv(block, h, linears)
    probs = softmax_probs(q[:, :, :rows], k, alive, key_bias, all_live) if rows else None
    return q, k, v, probs


def rows_read(query_rows: int | None, settings: StepSettings) -> int | None:
    """The leading query rows a hook reads, or None (all of them, or fused attention switched off)."""
    return query_rows if settings.fused_attention else None


def decide_with_context(block: BlockView, h: torch.Tensor, alive: torch.Tensor, decide: Decision,
                        settings: StepSettings, key_bias: torch.Tensor | None = None,
                        all_live: bool | None = None) -> tuple[Keep, ContextOf]:
    """The decision of a deciding block, and ``context_of(index)``: the attention context of the query rows
    ``index`` (long [B, M] -> [B, M, D]; None: every row, [B, N, D]).

    A decision that reads only its first query rows sees those ([B, H, r, N]), and the context comes from fused
    attention for just the rows asked for: no [B, H, N, N] tensor, and no attention work for the rows that a
    packed block drops. Any other decision sees every row (:func:`decide_and_mix`).
    """
    rows = rows_read(decide.query_rows, settings)
    if rows is None:
        keep, context = decide_and_mix(block, h, alive, decide, settings, key_bias, all_live)  # context [B, N, D]
        return keep, lambda index: context if index is None else gather_tokens(context, index)
    q, k, v, probs = leading_rows_attention(block, h, alive, settings.linears, key_bias, all_live, rows)
    keep = decide(probs, alive, v, all_live)

    def context_of(index: torch.Tensor | None) -> torch.Tensor:
        queries = q if index is None else gather_tokens(q, index, dim=2)  # [B, H, M, Dh]
        return fused_context(block, queries, k, v, alive, key_bias, all_live, settings.traceable)

    return keep, context_of
