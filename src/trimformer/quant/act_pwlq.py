"""PWLQ for activations, per tensor, as pure tensor functions.

Activations are quantized after their clipping range [lo, hi] is calibrated (any ``act_clip`` rule). One
breakpoint splits the range into a dense centre and a coarse tail, each with L levels:

- one-sided ranges (``lo >= -ONE_SIDED * hi``: after ReLU lo is 0, after GELU about -0.17): values are
  shifted to y = x - lo in [0, M], M = hi - lo, and no sign bit is spent, so all index bits go to the
  magnitude. GELU's small negative lobe is kept by the shift instead of being clipped to 0.
- two-sided ranges: magnitudes |x| in [0, M], M = max(-lo, hi), plus a sign bit, as for weights.

One-sided: centre levels i * p / (L - 1), i = 0..L-1 (exact zero, so ReLU's many zeros stay exact, and p
itself); tail levels p + i * (M - p) / L, i = 1..L (ending exactly at M). Two-sided: bin centres, as for
weights ((i + 1/2) * p / L in the centre, p + (i + 1/2) * (M - p) / L in the tail), so that +0 and -0 do not
waste a level each. A value goes to its region by magnitude (<= p is centre), then to the nearest level. L =
2^index_bits with the code width of
:func:`trimformer.quant.pwlq.code_bits` (region bit on top of b by default). The breakpoint p minimises the
squared error on the calibration sample (coarse-to-fine grid over p / M).
"""

from __future__ import annotations

import torch

from .pwlq import code_bits

ONE_SIDED = 0.1  # lo >= -ONE_SIDED * hi counts as a one-sided (post-ReLU/GELU) range


def is_one_sided(lo: float, hi: float) -> bool:
    """Whether [lo, hi] is treated as one-sided (no sign bit; values shifted by -lo)."""
    return lo >= -ONE_SIDED * max(hi, 0.0)


def act_levels(bits: int, one_sided: bool, region_bit: str = "extra") -> int:
    """Levels per piece (and per sign for two-sided ranges) for nominal ``bits``."""
    width = code_bits(bits, 1, region_bit)
    return 2 ** (width - 1 if one_sided else width - 2)


def quantize_magnitude(
    a: torch.Tensor, p: torch.Tensor, m: torch.Tensor, levels: int, one_sided: bool
) -> torch.Tensor:
    """Nearest level of magnitudes ``a`` (in [0, m]) on the centre / tail grids described above."""
    tail_step = ((m - p) / levels).clamp_min(1e-30)
    if one_sided:
        centre_step = (p / (levels - 1)).clamp_min(1e-30)
        centre = torch.round(a / centre_step).clamp(0, levels - 1) * centre_step
        tail = p + torch.round((a - p) / tail_step).clamp(1, levels) * tail_step
    else:
        centre_step = (p / levels).clamp_min(1e-30)
        centre = (torch.floor(a / centre_step).clamp(0, levels - 1) + 0.5) * centre_step
        tail = p + (torch.floor((a - p) / tail_step).clamp(0, levels - 1) + 0.5) * tail_step
    return torch.where(a <= p, centre, tail)


def _to_magnitude(x: torch.Tensor, lo: float, hi: float, one_sided: bool) -> tuple[torch.Tensor, float]:
    x = x.clamp(lo, hi)
    if one_sided:
        return x - lo, hi - lo
    return x.abs(), max(-lo, hi)


def search_act_breakpoint(sample: torch.Tensor, lo: float, hi: float, levels: int, one_sided: bool) -> float:
    """MSE-optimal breakpoint p (absolute, in magnitude units) for a calibration sample of activations."""
    a, m = _to_magnitude(sample.reshape(-1).float(), lo, hi, one_sided)
    if m <= 0:
        return 0.0
    m_t = torch.tensor(m)

    def err(ratios: torch.Tensor) -> torch.Tensor:  # ratios [R] -> mse [R]
        p = ratios[:, None] * m_t
        return (quantize_magnitude(a[None, :], p, m_t, levels, one_sided) - a[None, :]).pow(2).mean(dim=1)

    ratios = torch.linspace(0.02, 0.98, 49)
    best = float(ratios[int(err(ratios).argmin())])
    for half in (0.02, 0.0025):
        ratios = (best + torch.linspace(-half, half, 17)).clamp(1e-3, 1 - 1e-3)
        best = float(ratios[int(err(ratios).argmin())])
    return best * m


def fake_quant_act_pwlq(
    x: torch.Tensor, lo: float, hi: float, breakpoint: float, levels: int, one_sided: bool
) -> torch.Tensor:
    """PWLQ quantize-dequantize of activations ``x`` (any shape) with a calibrated range and breakpoint."""
    xf = x.to(torch.float32)
    a, m = _to_magnitude(xf, lo, hi, one_sided)
    q = quantize_magnitude(a, torch.tensor(breakpoint), torch.tensor(m), levels, one_sided)
    out = q + lo if one_sided else torch.where(xf < 0, -q, q)
    return out.to(x.dtype)
