"""AdaRound (Nagel et al., ICML 2020) as pure tensor functions: learned up/down rounding on a fixed grid.

A weight with continuous grid index t rounds to floor(t) + h(V), h the rectified sigmoid
h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1) with zeta = 1.1, gamma = -0.1; V starts where h equals
the fractional part of t (so the soft weight starts at the float weight), is trained on a reconstruction loss
plus ``reg_weight * sum(1 - |2h - 1|^beta)`` (beta annealed from ``beta_start`` to ``beta_end`` after a warm-up
without the regulariser), and ends hard: floor(t) + [V >= 0], every weight exactly the floor or the ceil.

The grid is described by :class:`RoundingGrid`, so that the same code rounds on a symmetric uniform grid and
inside PWLQ's pieces: value(idx) = sign * (offset + step * idx) with idx clipped to [lo, hi], code = base + idx.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ZETA = 1.1
GAMMA = -0.1


@dataclass
class RoundingGrid:
    """Per-weight grid of a [C, N] weight view (tensors broadcast to [C, N]): see the module docstring."""

    t: torch.Tensor  # [C, N] continuous index of the float weight
    sign: torch.Tensor  # [C, N] +-1 (1 for a symmetric grid)
    offset: torch.Tensor  # [C, N] or broadcastable
    step: torch.Tensor  # [C, N] or [C, 1]
    base: torch.Tensor  # [C, N] int64: code = base + idx
    lo: int
    hi: int

    def value(self, idx: torch.Tensor) -> torch.Tensor:
        """Grid values [C, N] at (possibly fractional) indices ``idx``, clipped to [lo, hi]."""
        return self.sign * (self.offset + self.step * idx.clamp(self.lo, self.hi))

    def codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) of integer indices ``idx``."""
        return (self.base + idx.clamp(self.lo, self.hi).to(torch.int64)).to(torch.int32)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) in [0, 1], exactly 0 or 1 beyond |V| ~ 3.1."""
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def init_v(frac: torch.Tensor) -> torch.Tensor:
    """V with rectified_sigmoid(V) == frac (frac in [0, 1))."""
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def round_reg(h: torch.Tensor, beta: float) -> torch.Tensor:
    """sum(1 - |2h - 1|^beta): zero only when every h is 0 or 1."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_at(step: int, iters: int, warmup: float, beta_start: float, beta_end: float) -> float | None:
    """Regulariser exponent at ``step`` (0-based), or None during the warm-up (regulariser off)."""
    start = int(warmup * iters)
    if step < start:
        return None
    frac = (step - start) / max(1, iters - start)
    return beta_end + (beta_start - beta_end) * max(0.0, 1.0 - frac)


def soft_values(grid: RoundingGrid, v: torch.Tensor) -> torch.Tensor:
    """Differentiable weight [C, N] at rounding variables ``v``: floor(t) + h(V) on the grid."""
    return grid.value(torch.floor(grid.t) + rectified_sigmoid(v))


def hard_index(grid: RoundingGrid, v: torch.Tensor) -> torch.Tensor:
    """Final integer indices: floor(t) + [V >= 0], clipped to the grid."""
    return (torch.floor(grid.t) + (v >= 0).to(grid.t.dtype)).clamp(grid.lo, grid.hi)


def nearest_index(grid: RoundingGrid) -> torch.Tensor:
    """Round-to-nearest indices, clipped to the grid."""
    return torch.round(grid.t).clamp(grid.lo, grid.hi)
