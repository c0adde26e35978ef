"""Token importance scores computed from attention probabilities."""

from __future__ import annotations

import torch


def ltp_importance(attn_probs: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
    """LTP importance: mean over heads and over the *real* query rows of each attention column.

    attn_probs: [B, H, Nq, Nk] post-softmax attention; query_mask: [B, Nq] bool, True for live tokens (None:
    every query row is live). Returns [B, Nk].

    The official LTP code divides by the padded length, so a threshold learned at one padding
    length means something else at another and a short sentence's scores shrink with the padding
    around it. Averaging over the live query rows only makes a score independent of padding: the
    scores of one sequence sum to 1 whatever batch it is in.
    """
    if attn_probs.dim() != 4:
        raise ValueError(f"attention probabilities must be [B, H, Nq, Nk], got {tuple(attn_probs.shape)}")
    heads = attn_probs.shape[1]
    if query_mask is None:  # a plain sum over heads and rows: two operations instead of seven (counts at batch 1)
        return attn_probs.sum(dim=(1, 2)) / (heads * attn_probs.shape[2])
    weights = query_mask.to(attn_probs.dtype)  # [B, Nq]
    # [B, 1, 1, Nq] @ [B, H, Nq, Nk] -> [B, H, 1, Nk]: one batched matmul over the contiguous probabilities
    total = torch.matmul(weights[:, None, None, :], attn_probs).sum(dim=(1, 2))  # [B, Nk]
    return total / (heads * weights.sum(dim=1, keepdim=True).clamp_min(1.0))


def class_attention(attn_probs: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention that the [CLS] query (row 0) pays to each token, averaged over heads (EViT, SaiT).

    attn_probs: [B, H, Nq, Nk] -> [B, Nk]. ``query_mask`` is accepted for a common signature; only row 0 is read.
    """
    if attn_probs.dim() != 4:
        raise ValueError(f"attention probabilities must be [B, H, Nq, Nk], got {tuple(attn_probs.shape)}")
    return attn_probs[:, :, 0, :].mean(dim=1)


def head_weighted_class_attention(attn_probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Adaptive Sparse ViT score: class attention weighted per head by the size of each head's output.

    s_i = sum_h w_hi * A_h[cls, i] with w_hi = ||O_hi|| / sum_h' ||O_h'i|| and O_h = A_h V_h.
    attn_probs: [B, H, N, N]; values: [B, H, N, Dh] -> [B, N].
    """
    head_out = torch.matmul(attn_probs, values)  # [B, H, N, Dh]
    norms = head_out.norm(dim=-1)  # [B, H, N]
    weights = norms / norms.sum(dim=1, keepdim=True).clamp_min(torch.finfo(norms.dtype).tiny)
    return (weights * attn_probs[:, :, 0, :]).sum(dim=1)
