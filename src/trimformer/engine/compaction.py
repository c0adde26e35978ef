"""Live-slot compaction, a CPU-only measure of packed inference.

A batch is padded to its longest row. Where the padding fills at least a share of a block's slots
(``ExecutionOptions.compact_min_padding``, default 0.1), the per-token half of the block (output projection,
norms, MLP: most of its work) runs on the live slots only. Gathering them and scattering the result back costs
a few passes over [T, D] per block, against a per-token MLP of about 9 D^2 multiply-adds: worth it from a few
percent of padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PerToken = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def on_live_slots(per_token: PerToken, x: torch.Tensor, context: torch.Tensor, live: torch.Tensor,
                  min_padding: float) -> torch.Tensor:
    """``per_token(x, context)`` with the padding slots zero: x [B, M, D], context [B, M, A] (A = D unless heads
    were pruned); live bool [B, M] -> [B, M, D].

    With padding below ``min_padding`` of the slots the whole batch runs and the padding is zeroed afterwards;
    otherwise only the live slots are computed.
    """
    batch, m, d = x.shape
    slots = live.view(-1).nonzero().view(-1)  # [T] live slots of the flattened batch
    if slots.shape[0] > (1 - min_padding) * batch * m:  # little padding: run it, then zero it
        return per_token(x, context) * live[..., None].to(x.dtype)
    x_live = x.reshape(batch * m, d).index_select(0, slots)[None]  # [1, T, D]
    context_live = context.reshape(batch * m, -1).index_select(0, slots)[None]  # [1, T, A]
    out = per_token(x_live, context_live)  # [1, T, D]
    return x.new_zeros(batch * m, d).index_copy_(0, slots, out[0]).view(batch, m, d)
