"""Analytic FLOPs of a transformer encoder from the number of tokens each layer processes.

Per layer, with n_in tokens entering and n_out kept after this layer's pruning decision (made right
after the attention softmax, so only kept tokens need the value mixing, output projection and MLP):

    MACs = 3 d^2 n_in          (Q, K, V projections)
         + d n_in^2            (Q K^T)
         + d n_out n_in        (attention x V, kept query rows only)
         + d^2 n_out           (output projection)
         + 2 d f n_out         (MLP, hidden width f)

With no pruning (n_in = n_out = n) this is LTP's 2 d n^2 + 4 d^2 n + 8 d^2 n for f = 4d. FLOPs = 2 MACs.

A layer whose attention heads were pruned (:mod:`trimformer.heads`) has an attention width a = kept heads x head
size below d: every ``d`` that counts attention channels above becomes ``a`` (3 d a n_in + a n_in^2 + a n_out n_in
+ a d n_out); a pruned MLP has its own f per layer. ``attn_width`` and ``ffn`` may be tensors [L] (one value per
layer, broadcast against [B, L] counts); ``attn_width=None`` is a = d, the dense formula above, unchanged.

Merging (ToMe, EViT) happens after the attention instead, so every one of the n_in query rows gets the
attention x V and the output projection (``n_rows`` = n_in) and only the MLP sees n_out tokens; the merge
decision adds its own MACs (``extra_macs``; ToMe: the A x B key similarity matmul, Dh |A| |B|). As for
softmax, LayerNorm and GELU, elementwise, gather and scatter work (the weighted averages) is not counted,
which is what torch.utils.flop_counter counts too.
"""

from __future__ import annotations

import torch

Width = int | torch.Tensor  # one value, or one per layer [L]


def layer_macs(d: int, ffn: Width, n_in: torch.Tensor | float, n_out: torch.Tensor | float,
               n_rows: torch.Tensor | float | None = None, attn_width: Width | None = None):
    """MACs of one encoder layer (works elementwise on tensors of token counts).

    ``n_rows``: query rows that get attention x V and the output projection (default n_out, pruning;
    n_in for merging layers). ``attn_width``: heads x head size (default d; smaller once heads are pruned).
    """
    rows = n_out if n_rows is None else n_rows
    if attn_width is None:
        return 3 * d * d * n_in + d * n_in * n_in + d * rows * n_in + d * d * rows + 2 * d * ffn * n_out
    a = attn_width
    return 3 * d * a * n_in + a * n_in * n_in + a * rows * n_in + a * d * rows + 2 * d * ffn * n_out


def encoder_flops(d: int, ffn: Width, n_in: torch.Tensor, n_out: torch.Tensor, n_rows: torch.Tensor | None = None,
                  extra_macs: torch.Tensor | None = None, attn_width: Width | None = None) -> torch.Tensor:
    """FLOPs per sample. n_in, n_out (and n_rows, extra_macs if given): [B, L] per layer -> [B]; ``ffn`` and
    ``attn_width``: one width or [L] per layer."""
    ffn, attn_width = (w.to(n_in) if isinstance(w, torch.Tensor) else w for w in (ffn, attn_width))  # counts' dtype
    macs = layer_macs(d, ffn, n_in, n_out, n_rows, attn_width)
    if extra_macs is not None:
        macs = macs + extra_macs
    return 2 * macs.sum(dim=-1)


def dense_encoder_flops(d: int, ffn: Width, num_layers: int, lengths: torch.Tensor,
                        attn_width: Width | None = None) -> torch.Tensor:
    """FLOPs per sample of the encoder without token pruning on real (unpadded) lengths [B] -> [B] (with its
    per-layer widths, if given)."""
    n = lengths.to(torch.float64)[:, None].expand(-1, num_layers)
    return encoder_flops(d, ffn, n, n, attn_width=attn_width)
