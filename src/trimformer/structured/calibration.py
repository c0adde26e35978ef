"""Batch-norm recalibration: a pruned network's running statistics re-estimated on a few batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every batch norm's running mean / variance and re-estimate them as the plain average over ``batches``
    (inputs (B, C, H, W); forward in train mode, no gradients, weights unchanged); returns ``model`` in eval mode.
    ValueError when ``batches`` is empty."""
    batches = list(batches)
    if not batches:
        raise ValueError("batch-norm recalibration needs at least one batch of inputs")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return model
