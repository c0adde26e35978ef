"""Turning importance scores into keep masks: thresholds (soft and hard) and top-k."""

from __future__ import annotations

import math

import torch


def protect_prefix(mask: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Force the first ``num_prefix`` positions (e.g. [CLS]) to be kept. Works for bool and float masks."""
    if num_prefix <= 0:
        return mask
    if mask.dtype == torch.bool:  # no gradient to keep: a copy with the prefix set is enough
        kept = mask.clone()
        kept[:, :num_prefix] = True
        return kept
    prefix = torch.zeros_like(mask, dtype=torch.bool)  # float (soft) masks: out of place, for the gradient
    prefix[:, :num_prefix] = True
    return torch.where(prefix, torch.full_like(mask, 1.0), mask)


def protect_tokens(keep: torch.Tensor | None, protected: torch.Tensor | None) -> torch.Tensor | None:
    """Force the ``protected`` tokens (bool [B, N], e.g. every [SEP] of a sentence pair) to be kept.

    ``keep``: a bool mask [B, N], float keep weights [B, N] (set to 1 there, out of place for the gradient), or
    None (keep all: unchanged).
    """
    if protected is None or keep is None:
        return keep
    if keep.dtype == torch.bool:
        return keep | protected
    return torch.where(protected, torch.ones_like(keep), keep)


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


def count_from_rate(live: int, rate: float, minimum: int = 1) -> int:
    """:func:`keep_counts_from_rate` for one row of ``live`` tokens, as a Python int (a size known from shapes)."""
    return min(max(math.ceil(live * rate), minimum), live)  # int * float: the same float64 product


def mass_keep_counts(scores: torch.Tensor, alive: torch.Tensor, mass: float | torch.Tensor,
                     minimum: int = 1) -> torch.Tensor:
    """Per row, the size of the smallest set of live tokens whose share of the row's score mass reaches ``mass``.

    scores: [B, N] (negative values count as 0); alive: bool [B, N]; mass: a float or a [B] tensor in (0, 1].
    Returns long [B] in [min(minimum, live), live]. A flat row needs about ``mass * live`` tokens, a peaked
    row fewer: this is what makes the count input-adaptive. A row whose scores are all 0 keeps every token.
    """
    mass_t = torch.as_tensor(mass, dtype=torch.float64, device=scores.device)
    if bool(((mass_t <= 0) | (mass_t > 1)).any()):
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    values = scores.detach().to(torch.float64).clamp_min(0).masked_fill(~alive, 0.0)  # [B, N]
    total = values.sum(dim=1, keepdim=True)  # [B, 1]
    ordered = values.sort(dim=1, descending=True).values  # [B, N]
    share = ordered.cumsum(dim=1) / total.clamp_min(torch.finfo(torch.float64).tiny)  # [B, N] non-decreasing
    slack = 16 * torch.finfo(scores.dtype).eps if scores.dtype.is_floating_point else 0.0
    target = mass_t.reshape(-1, 1) - slack  # rounding of the input: a flat row at mass k/N needs exactly k tokens
    counts = (share < target).sum(dim=1) + 1  # tokens before the share reaches the target, plus that one
    live = alive.sum(dim=1)
    counts = torch.where(total[:, 0] > 0, counts, live)
    return torch.minimum(counts.clamp_min(minimum), live)


def cumulative_mass_mask(scores: torch.Tensor, alive: torch.Tensor, mass: float | torch.Tensor,
                         minimum: int = 1) -> torch.Tensor:
    """Keep the highest-scoring live tokens of each row until their share of the score mass reaches ``mass``.

    scores: [B, N]; alive: bool [B, N] -> bool [B, N], a subset of ``alive`` (see :func:`mass_keep_counts`).
    """
    return topk_mask(scores, alive, mass_keep_counts(scores, alive, mass, minimum))
