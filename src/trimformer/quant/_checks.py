"""Input validation shared by the quantization functions (clear ValueErrors, nothing else)."""

from __future__ import annotations

import torch

MIN_BITS = 2
MAX_BITS = 16


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` if it is an int in [MIN_BITS, MAX_BITS], else raise ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"{what} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return bits


def check_finite(t: torch.Tensor, what: str = "tensor") -> None:
    """Raise ValueError if ``t`` is empty, not floating point, or holds NaN/inf."""
    if not torch.is_floating_point(t):
        raise ValueError(f"{what} must be a floating point tensor, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{what} is empty")
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} contains {n_bad} NaN/inf value(s); cannot quantize")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


def as_channels(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """View a weight as [C, N] float32: one row per output channel, or a single row per tensor."""
    w = w.detach().to(torch.float32)
    if per_channel and w.ndim >= 2:
        return w.reshape(w.shape[0], -1)
    return w.reshape(1, -1)


def pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= x (elementwise, x > 0)."""
    return torch.exp2(torch.ceil(torch.log2(x)))
