"""Turning importance scores into keep masks: thresholds (soft and hard) and top-k."""

from __future__ import annotations

import torch


def protect_prefix(mask: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Force the first ``num_prefix`` positions (e.g. [CLS]) to be kept. Works for bool and float masks."""
    if num_prefix <= 0:
        return mask
    keep_value = True if mask.dtype == torch.bool else 1.0
    prefix = torch.zeros_like(mask, dtype=torch.bool)
    prefix[:, :num_prefix] = True
    return torch.where(prefix, torch.full_like(mask, keep_value), mask)


def soft_threshold_mask(scores: torch.Tensor, threshold: torch.Tensor | float, temperature: float) -> torch.Tensor:
    """Differentiable keep probability sigmoid((score - threshold) / T). scores: [B, N] -> [B, N]."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.sigmoid((scores - threshold) / temperature)


def hard_threshold_mask(scores: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Binary keep mask: score >= threshold. scores: [B, N] -> bool [B, N]."""
    return scores >= threshold


def topk_mask(scores: torch.Tensor, alive: torch.Tensor, keep_counts: torch.Tensor) -> torch.Tensor:
    """Keep the ``keep_counts[b]`` highest-scoring live tokens of each row.

    scores: [B, N]; alive: bool [B, N]; keep_counts: long [B]. Returns bool [B, N], a subset of ``alive``.
    """
    masked = scores.masked_fill(~alive, float("-inf"))
    ranks = masked.argsort(dim=1, descending=True).argsort(dim=1)  # [B, N] rank of each token
    keep = ranks < keep_counts.clamp_min(0)[:, None]
    return keep & alive


def keep_counts_from_rate(alive: torch.Tensor, rate: float, minimum: int = 1) -> torch.Tensor:
    """ceil(rate * live tokens) per row, at least ``minimum``. alive: bool [B, N] -> long [B]."""
    live = alive.sum(dim=1)
    counts = torch.ceil(live.to(torch.float64) * rate).to(torch.long)
    return torch.minimum(counts.clamp_min(minimum), live)
