"""Token merging and fusing as pure tensor functions (ToMe, EViT): no model imports.

A merge decision is a :class:`MergePlan` in the block's own token layout [B, N]: token ``i`` goes into
slot ``into[i]``, and every kept slot becomes the ``weight``-weighted average of the tokens that went into it.
Usually a surviving token stays in its own slot (``into[i] == i``); a plan may also move survivors to other
slots to reorder them (``source`` says which token each slot then holds). :func:`merge_tokens` applies a
plan; packing the survivors (or masking the others) is the engine's job, as for pruning.

- ToMe (Bolya et al., ICLR 2023): bipartite soft matching on the cosine similarity of the attention keys
  (mean over heads), ``r`` merges per layer, size-weighted averages, proportional attention (log size added
  to each key's logits). By default it reproduces the official code (facebookresearch/ToMe, ``merge.py``):
  the A/B split alternates over all live tokens, prefix tokens included, and the survivors are reordered
  [prefix tokens, unmerged A tokens, B tokens]. See :func:`bipartite_soft_matching` for the variants.
- EViT (Liang et al., ICLR 2022): keep the top tokens by class attention; the inattentive rest is fused
  into one token, by default their class-attention-weighted sum as in the official code (youweiliang/evit).

Prefix tokens ([CLS], DeiT's distillation token) are never merged: not as sources, not as destinations.
Dead tokens (padding, or pruned in masked execution) are never touched either, so padded batches work:
rows may then end with different token counts, which packing handles as for pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trimformer.core.packing import gather_tokens, kept_first, packing_index
from trimformer.core.selection import keep_counts_from_rate, topk_mask

FUSE_MODES = ("sum", "average")  # EViT's fused token; the first is the default (the official code's)
TOME_SPLITS = ("official", "mergeable")  # which tokens ToMe's A/B alternation runs over; the first is the default
TOME_ORDERS = ("official", "slots")  # where ToMe's survivors end up; the first is the default


@dataclass
class MergePlan:
    """Where each token goes. Every tensor is in the input layout [B, N]."""

    keep: torch.Tensor  # bool [B, N]: slots that hold a survivor (alone, or having absorbed others)
    into: torch.Tensor  # long [B, N]: slot that token i goes into (i itself if it stays where it is)
    weight: torch.Tensor  # [B, N]: weight of token i in its destination's average
    normalize: bool = True  # False: a destination is sum(weight * x), not the weighted average
    macs: torch.Tensor | None = None  # [B] multiply-accumulates spent on the decision (ToMe's similarities)
    # long [B, N]: the input token whose identity slot j holds afterwards (the survivor that moved there, and
    # absorbed what else went into j); None: every survivor stays in its own slot. An engine that tracks
    # per-slot data (e.g. original positions) gathers it with this index.
    source: torch.Tensor | None = None


def _prefix_mask(alive: torch.Tensor, num_prefix: int) -> torch.Tensor:
    prefix = torch.zeros_like(alive)
    prefix[:, :num_prefix] = True
    return prefix


def _identity(alive: torch.Tensor) -> torch.Tensor:
    batch, n = alive.shape
    return torch.arange(n, device=alive.device).expand(batch, n).clone()  # [B, N]


def merge_tokens(x: torch.Tensor, sizes: torch.Tensor, plan: MergePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``plan``: x [B, N, D], sizes [B, N] -> (merged x [B, N, D], merged sizes [B, N]).

    Destinations hold the weighted average of what went into them (the weighted sum when
    ``plan.normalize`` is False); a slot that received one token holds it bit-exact (the token at
    ``plan.source`` when the plan moves survivors). The result is still in the input layout: slots with
    ``plan.keep`` False are to be dropped (or masked) by the caller. Sizes add.
    """
    into = plan.into
    weight = plan.weight.to(x.dtype)  # [B, N]
    index = into[..., None].expand_as(x)  # [B, N, D]
    summed = torch.zeros_like(x).scatter_add(1, index, x * weight[..., None])  # [B, N, D]
    new_sizes = torch.zeros_like(sizes).scatter_add(1, into, sizes)  # [B, N]
    if not plan.normalize:
        return summed, new_sizes
    total = torch.zeros_like(weight).scatter_add(1, into, weight)  # [B, N]
    count = torch.zeros_like(into).scatter_add(1, into, torch.ones_like(into))  # [B, N] tokens per slot
    average = summed / total.clamp_min(torch.finfo(x.dtype).tiny)[..., None]
    single = x if plan.source is None else gather_tokens(x, plan.source)  # [B, N, D] each slot's own token
    return torch.where((count > 1)[..., None], average, single), new_sizes


def proportional_attention_bias(sizes: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """ToMe's proportional attention as an additive key bias: log(size) for live keys, 0 for dead ones.

    softmax(q k^T / sqrt(d) + log s) makes a key of size s weigh as much as s copies of it. sizes,
    alive: [B, N] -> [B, N]. All sizes 1 gives a zero bias (plain attention).
    """
    safe = torch.where(alive, sizes, torch.ones_like(sizes))
    return torch.log(safe)


def bipartite_soft_matching(metric: torch.Tensor, r: int, alive: torch.Tensor, num_prefix: int,
                            weight: torch.Tensor | None = None, split: str = "official",
                            order: str = "official") -> MergePlan:
    """ToMe's bipartite soft matching: merge up to ``r`` tokens of each row into their most similar partner.

    metric: [B, N, C] features to compare (ToMe: the attention keys averaged over heads); alive: bool [B, N];
    weight: [B, N] token sizes for the averages (ones when None). The live tokens are split, alternating in
    order, into sets A and B; each mergeable A token is linked to its most cosine-similar mergeable B token,
    and the ``r`` most similar links are merged (at most half of a row's mergeable tokens, as in ToMe).

    split='official' (default): the alternation runs over all live tokens, prefix tokens included, as in
        the official code, whose [CLS] at index 0 falls in A (and a distillation token at 1 in B) and is
        then barred from matching. 'mergeable': over the live non-prefix tokens only (trimformer's earlier
        rule); every token then falls in the other set, so almost no merged pair is the official one.
    order='official' (default): the survivors are moved to the row's first live slots in the official
        code's order, [prefix tokens, unmerged A tokens, B tokens], each group in its previous order. The
        order decides the A/B split of the next merging layer, so it changes which tokens merge there: only
        with both defaults does a whole model reproduce the official code (logits to float rounding; with
        either earlier option, 1-20% relative logit differences on tiny random ViTs). The plan's ``source``
        records the moves: per-slot data kept outside x and sizes (e.g. original positions) must follow it.
        'slots': every survivor stays in its slot, no reordering (trimformer's earlier behaviour).
    Dead tokens are never merged, never a destination, and stay where they are. A row whose cap allows no
    merge (fewer than two mergeable tokens) is left as it is, order included, as the official code does.
    The defaults are those of the official code because ToMe's published results come from it.
    """
    if r < 0:
        raise ValueError(f"r (tokens merged per layer) must be >= 0, got {r}")
    if split not in TOME_SPLITS:
        raise ValueError(f"split must be one of {TOME_SPLITS}, got {split!r}")
    if order not in TOME_ORDERS:
        raise ValueError(f"order must be one of {TOME_ORDERS}, got {order!r}")
    batch, n, channels = metric.shape
    mergeable = alive & ~_prefix_mask(alive, num_prefix)  # [B, N]
    pool = alive if split == "official" else mergeable  # the tokens that alternate between A and B
    rank = pool.long().cumsum(dim=1) - 1  # [B, N] rank in the pool (long: ONNX has no bool CumSum)
    set_a = pool & (rank % 2 == 0)  # [B, N]
    a_index, a_live = packing_index(set_a)  # [B, Na]
    b_index, b_live = packing_index(pool & (rank % 2 == 1))  # [B, Nb]
    a_ok = a_live & mergeable.gather(1, a_index)  # [B, Na] may be merged away
    b_ok = b_live & mergeable.gather(1, b_index)  # [B, Nb] may absorb
    into = _identity(alive)
    weight = torch.ones(alive.shape, dtype=metric.dtype, device=metric.device) if weight is None else weight
    macs = (channels * a_live.sum(dim=1) * b_live.sum(dim=1)).to(metric.dtype)  # [B] the similarity matmul
    r_row = torch.clamp(mergeable.sum(dim=1) // 2, max=r)  # [B]
    if torch.compiler.is_compiling():  # a compiled graph cannot branch on the set sizes: rows of one token are refused
        torch._check(a_index.shape[1] > 0, lambda: "ToMe: compiled merges need two live tokens in some row")
        torch._check(b_index.shape[1] > 0, lambda: "ToMe: compiled merges need two live tokens in some row")
    elif r == 0 or a_index.shape[1] == 0 or b_index.shape[1] == 0:
        return MergePlan(keep=alive.clone(), into=into, weight=weight, macs=torch.zeros_like(macs))

    unit = F.normalize(metric, dim=-1)  # [B, N, C]
    scores = gather_tokens(unit, a_index) @ gather_tokens(unit, b_index).transpose(1, 2)  # [B, Na, Nb] cosine
    scores = scores.masked_fill(~b_ok[:, None, :], float("-inf"))
    best, best_b = scores.max(dim=-1)  # [B, Na]: each A token's most similar B token
    best = best.masked_fill(~a_ok, float("-inf"))
    ranks = _descending_ranks(best)  # [B, Na] rank of each edge
    merged = (ranks < r_row[:, None]) & a_ok & torch.isfinite(best)  # [B, Na]

    destination = b_index.gather(1, best_b)  # [B, Na] original index of each A token's match
    into.scatter_(1, a_index, torch.where(merged, destination, a_index))
    removed = torch.zeros_like(alive).scatter_(1, a_index, merged)  # [B, N]
    keep = alive & ~removed
    if order == "slots":
        return MergePlan(keep=keep, into=into, weight=weight, macs=macs)

    # Official order: the survivors, sorted [prefix, unmerged A, B], move to the row's first live slots.
    group = torch.where(mergeable, torch.where(set_a, 1, 2), 0)  # [B, N] 0 prefix, 1 set A, 2 set B
    key = torch.where(keep, group, 3) * n + _identity(alive)  # [B, N]; non-survivors (3) last
    ordered = key.argsort(dim=1)  # [B, N] input slot of the k-th survivor (a permutation of each row)
    slots = kept_first(alive, n)  # [B, N] live slots first, in order
    reorder = r_row > 0  # [B] rows the official code would touch
    ordered = torch.where(reorder[:, None], ordered, _identity(alive))
    slots = torch.where(reorder[:, None], slots, _identity(alive))
    moved_to = torch.empty_like(into).scatter_(1, ordered, slots)  # [B, N] slot each survivor moves to
    source = torch.empty_like(into).scatter_(1, slots, ordered)  # [B, N] inverse permutation
    into = torch.where(alive, moved_to.gather(1, into), into)  # dead tokens stay put
    keep = torch.zeros_like(keep).scatter_(1, moved_to, keep)  # [B, N] the slots the survivors now occupy
    source = torch.where(keep, source, _identity(alive))
    return MergePlan(keep=keep, into=into, weight=weight, macs=macs, source=source)


def _descending_ranks(values: torch.Tensor) -> torch.Tensor:
    """Rank of each value in a stable descending sort of its row (ties by position): [B, K] -> long [B, K].

    Counted by comparing all pairs ([B, K, K], small next to the similarity matrix) instead of sorting twice, so
    that the merge traces into an ONNX graph (stable sorts do not export).
    """
    k = values.shape[1]
    earlier = torch.ones(k, k, dtype=torch.bool, device=values.device).tril(-1)  # [K, K]: j < i
    pairs_i, pairs_j = values[:, :, None], values[:, None, :]  # [B, K, 1], [B, 1, K]
    return ((pairs_j > pairs_i) | ((pairs_j == pairs_i) & earlier)).sum(dim=-1)


def fuse_inattentive(scores: torch.Tensor, alive: torch.Tensor, num_prefix: int, keep_rate: float,
                     fuse: str = "sum") -> MergePlan:
    """EViT: keep ceil(keep_rate * n) of the n live non-prefix tokens by ``scores``; fuse the rest into one.

    scores: [B, N] class attention (mean over heads); alive: bool [B, N]. ``fuse='sum'`` (default): the fused
    token is the sum of the dropped tokens weighted by their scores, unnormalised, as in EViT's official code
    (``extra_token``); ``'average'``: the score-weighted average, as the paper's description reads. The fused
    token takes the slot of the dropped token with the highest score (the official code appends it after the
    kept tokens; token order does not matter to attention, nor to the next EViT selection, which is by score).
    Nothing is fused when no token is dropped.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    if fuse not in FUSE_MODES:
        raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
    candidates = alive & ~_prefix_mask(alive, num_prefix)  # [B, N]
    counts = keep_counts_from_rate(candidates, keep_rate, minimum=0)  # [B]
    dropped = candidates & ~topk_mask(scores, candidates, counts)  # [B, N]
    host = scores.masked_fill(~dropped, float("-inf")).argmax(dim=1)  # [B] slot of the fused token
    has_fused = dropped.any(dim=1)  # [B]
    host_mask = torch.zeros_like(alive).scatter_(1, host[:, None], has_fused[:, None])  # [B, N]
    into = torch.where(dropped, host[:, None], _identity(alive))
    weight = torch.where(dropped, scores, torch.ones_like(scores))
    keep = (alive & ~dropped) | host_mask
    return MergePlan(keep=keep, into=into, weight=weight, normalize=fuse == "average")


def evit_layers(num_layers: int) -> list[int]:
    """EViT's default pruning layers, 0-indexed 3, 6, 9 of 12, scaled to other depths (duplicates dropped)."""
    return sorted({math.floor(k * num_layers / 4) for k in (1, 2, 3)})
