"""Uniform quantizers: symmetric (weights, per channel or per tensor) and asymmetric (activations).

Symmetric b-bit is mid-tread: integers k in [-(2^(b-1)-1), 2^(b-1)-1], value k * scale, so zero is exact and
one of the 2^b codes is unused. Codes are stored unsigned as k + qmax.
"""

from __future__ import annotations

import torch

from ._checks import check_bits, check_finite, pow2_ceil

TINY = 1e-30


def qmax_symmetric(bits: int) -> int:
    """Largest integer level of the symmetric b-bit grid."""
    return 2 ** (check_bits(bits) - 1) - 1


def symmetric_scale(absmax: torch.Tensor, bits: int, pow2: bool = False) -> torch.Tensor:
    """Step size for a symmetric grid covering [-absmax, absmax]; rounded up to 2^k if ``pow2``."""
    scale = absmax.to(torch.float32).clamp_min(TINY) / qmax_symmetric(bits)
    return pow2_ceil(scale) if pow2 else scale


def quantize_symmetric(w2d: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in [0, 2*qmax] (int32) for rows of ``w2d`` [C, N] with per-row ``scale`` [C]."""
    qmax = qmax_symmetric(bits)
    k = torch.round(w2d / scale[:, None]).clamp_(-qmax, qmax)
    return (k + qmax).to(torch.int32)


def dequantize_symmetric(codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`quantize_symmetric` (float32, [C, N])."""
    return (codes.to(torch.float32) - qmax_symmetric(bits)) * scale[:, None]


def fake_quant_symmetric(w2d: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then dequantize rows of ``w2d`` [C, N]."""
    return dequantize_symmetric(quantize_symmetric(w2d, scale, bits), scale, bits)


def mse_clip_absmax(
    w2d: torch.Tensor, bits: int, pow2: bool = False, lo: float = 0.2, n_grid: int = 81
) -> torch.Tensor:
    """Per-row clipping range in [lo*max, max] minimising the squared error (grid search, vectorised)."""
    check_finite(w2d, "weight")
    absmax = w2d.abs().amax(dim=1)
    best_err = torch.full_like(absmax, float("inf"))
    best = absmax.clone()
    for alpha in torch.linspace(lo, 1.0, n_grid).tolist():
        cand = absmax * alpha
        err = (fake_quant_symmetric(w2d, symmetric_scale(cand, bits, pow2), bits) - w2d).pow(2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, cand, best)
    return best


def asymmetric_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point for an unsigned b-bit grid on [min(lo,0), max(hi,0)]."""
    n = 2 ** check_bits(bits) - 1
    lo = torch.clamp(lo.to(torch.float32), max=0.0)
    hi = torch.clamp(hi.to(torch.float32), min=0.0)
    scale = ((hi - lo) / n).clamp_min(TINY)
    zero_point = torch.round(-lo / scale).clamp(0, n)
    return scale, zero_point


def fake_quant_asymmetric(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric (affine) fake quantization of ``x`` to b bits with range [lo, hi]; keeps x's dtype."""
    scale, zp = asymmetric_qparams(lo, hi, bits)
    n = 2**bits - 1
    q = torch.clamp(torch.round(x.to(torch.float32) / scale) + zp, 0, n)
    return ((q - zp) * scale).to(x.dtype)
