"""Analytic FLOPs of a transformer encoder from the number of tokens each layer processes.

Per layer, with n_in tokens entering and n_out kept after this layer's pruning decision (made right
after the attention softmax, so only kept tokens need the value mixing, output projection and MLP):

    MACs = 3 d^2 n_in          (Q, K, V projections)
         + d n_in^2            (Q K^T)
         + d n_out n_in        (attention x V, kept query rows only)
         + d^2 n_out           (output projection)
         + 2 d f n_out         (MLP, hidden width f)

With no pruning (n_in = n_out = n) this is LTP's 2 d n^2 + 4 d^2 n + 8 d^2 n for f = 4d. FLOPs = 2 MACs.
"""

from __future__ import annotations

import torch


def layer_macs(d: int, ffn: int, n_in: torch.Tensor | float, n_out: torch.Tensor | float):
    """MACs of one encoder layer (works elementwise on tensors of token counts)."""
    return 3 * d * d * n_in + d * n_in * n_in + d * n_out * n_in + d * d * n_out + 2 * d * ffn * n_out


def encoder_flops(d: int, ffn: int, n_in: torch.Tensor, n_out: torch.Tensor) -> torch.Tensor:
    """FLOPs per sample. n_in, n_out: [B, L] token counts per layer -> [B]."""
    return 2 * layer_macs(d, ffn, n_in, n_out).sum(dim=-1)


def dense_encoder_flops(d: int, ffn: int, num_layers: int, lengths: torch.Tensor) -> torch.Tensor:
    """FLOPs per sample of the unpruned encoder on real (unpadded) lengths [B] -> [B]."""
    n = lengths.to(torch.float64)[:, None].expand(-1, num_layers)
    return encoder_flops(d, ffn, n, n)
