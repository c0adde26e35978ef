"""Real removal of pruned tokens for a whole batch, each row keeping its own number of tokens."""

from __future__ import annotations

import torch


def packing_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions to gather so that each row's kept tokens come first, in their original order.

    keep: bool [B, N]. Returns (index [B, M], packed_mask bool [B, M]) where M = max kept per row:
    the smallest width that holds every row, so padding is only what the longest row forces.
    """
    if keep.shape[0] == 1:  # one row: its kept positions, no padding (a fast path for batch 1)
        index = keep[0].nonzero().view(1, -1)  # [1, M]
        return index, torch.ones(index.shape, dtype=torch.bool, device=keep.device)
    if keep.shape[0] == 0:  # no rows (the batch size is never data-dependent; an empty row is fine below)
        return keep.new_zeros(0, 0, dtype=torch.long), keep.new_zeros(0, 0)
    # A top-k whose k is a tensor computed here, so that a traced graph (ONNX TopK) decides the width itself.
    index = kept_first(keep, keep.sum(dim=1).max())  # [B, M]
    return index, keep.gather(1, index)  # packed_mask bool [B, M]: True for the kept tokens


def kept_first(keep: torch.Tensor, width: torch.Tensor | int) -> torch.Tensor:
    """The first ``width`` positions of each row in a stable partition, kept ones first: keep bool [B, N] ->
    long [B, width]. The ``width`` largest of (2N if kept) - position (distinct, exact below 2^23 tokens): no sort,
    so that it traces (ONNX TopK, with a computed k)."""
    n = keep.shape[1]
    positions = torch.arange(n, device=keep.device, dtype=torch.float32)
    key = keep.to(torch.float32) * (2 * n) - positions  # [B, N]
    return key.topk(width, dim=1).indices


def kept_counts(keep: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Kept tokens per row ([B], ``dtype``) of ``keep`` (bool [B, N]) packed by ``index`` ([B, M], from
    :func:`packing_index`); one row reads it off the index width, without a reduction (batch 1)."""
    if keep.shape[0] == 1:
        return torch.full((1,), index.shape[1], dtype=dtype, device=keep.device)
    return keep.sum(dim=1).to(dtype)


def gather_tokens(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gather along the token dimension ``dim`` of ``x`` ([B, ..., N, ...]) with index [B, M]."""
    if index.shape[0] == 1 and x.shape[0] == 1:
        return x.index_select(dim, index[0])
    shape = [1] * x.dim()
    shape[0], shape[dim] = index.shape
    expanded = index.view(shape).expand(*[s if i != dim else index.shape[1] for i, s in enumerate(x.shape)])
    return x.gather(dim, expanded)


def pack(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove dropped tokens. x: [B, N, D], keep: bool [B, N] -> (packed [B, M, D], mask [B, M], index [B, M])."""
    index, packed_mask = packing_index(keep)
    return gather_tokens(x, index), packed_mask, index


def unpack(packed: torch.Tensor, index: torch.Tensor, packed_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Scatter packed tokens [B, M, D] back to [B, length, D]; removed positions are zero."""
    batch, _, dim = packed.shape
    out = packed.new_zeros(batch, length, dim)
    values = packed * packed_mask[..., None].to(packed.dtype)
    safe_index = torch.where(packed_mask, index, torch.zeros_like(index))
    # Padding slots point at position 0 with zero values; scatter_add leaves the real value there intact.
    return out.scatter_add(1, safe_index[..., None].expand(-1, -1, dim), values)


def plan_row_groups(counts: list[int], max_groups: int = 4, min_rows: int = 8, min_saving: float = 0.1,
                    min_tokens: int = 512) -> list[list[int]]:
    """Split the rows of a packed batch into groups of similar live-token counts.

    A packed batch pads every row to its longest one; run as separate groups, each pads only to its own
    longest row, but every group costs its own per-block overhead (and a small batch gains nothing from
    splitting). So groups are runs of rows sorted by count, each with at least ``min_rows`` rows, and one
    more group is taken only while it cuts the padded token total by ``min_saving`` (a fraction) *and* by
    ``min_tokens`` or more. ``counts``: live tokens per row. Returns lists of row indices, in increasing
    count order; a single group means no split.
    """
    order = sorted(range(len(counts)), key=lambda r: counts[r])
    ordered = [counts[r] for r in order]
    n = len(ordered)
    padding = n * ordered[-1] - sum(ordered) if n else 0
    if n < 2 * min_rows or padding < max(min_tokens, min_saving * n * ordered[-1]):
        return [order]  # too few rows, or less padding in the whole batch than one more group must save
    # best[g][j]: least padded total for the first j sorted rows in g groups; cut[g][j]: where the last group starts.
    best = [[float("inf")] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(g * min_rows, n + 1):
            for i in range((g - 1) * min_rows, j - min_rows + 1):
                cost = best[g - 1][i] + (j - i) * ordered[j - 1]  # rows i..j-1 padded to the largest
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    groups = 1
    for g in range(2, max_groups + 1):
        saved = best[groups][n] - best[g][n]
        if best[g][n] < float("inf") and saved >= max(min_tokens, min_saving * best[groups][n]):
            groups = g
        else:
            break
    bounds, j = [], n
    for g in range(groups, 0, -1):
        i = cut[g][j] if groups > 1 else 0
        bounds.append((i, j))
        j = i
    return [order[i:j] for i, j in reversed(bounds)]
