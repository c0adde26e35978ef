"""Piecewise linear quantization (PWLQ, Fang et al., ECCV 2020) of weight rows, as pure tensor functions.

Layout. A row with range m = max|w| is split at breakpoints 0 < p_1 < ... < p_k < m into n = k + 1
magnitude pieces [e_j, e_{j+1}] (e_0 = 0, e_n = m). A code is ``region | sign | index`` with
``r = ceil(log2 n)`` region bits, one sign bit and some index bits, so each piece gets L = 2^index_bits
levels per sign, at the bin centres e_j + (i + 1/2) * (e_{j+1} - e_j) / L. Equal level counts per piece are
what the paper's closed-form breakpoints assume (error ~ F_c p^2 + F_t (m - p)^2).

How many bits "b-bit PWLQ" means is a choice (:func:`code_bits`):
- ``region_bit="extra"`` (default, the paper's and the official code's accounting): each piece is a b-bit
  signed grid (sign + (b-1) index bits) and the region bit is stored on top, b + r bits per weight. This
  has as many levels as (b+1)-bit uniform, and file sizes count the extra bit.
- ``region_bit="inside"``: the region bit comes out of the b bits (b - r - 1 index bits), so the code is
  exactly b bits and has as many levels as b-bit uniform.
The functions below take ``bits`` as the stored code width; :func:`code_bits` maps a nominal b to it.
Weights are assigned to a piece by magnitude (|w| <= p_1 is centre), then to the nearest level in it.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_bits, check_choice, check_finite, pow2_ceil
from .adaround import RoundingGrid

TINY = 1e-30
RATIO_EPS = 1e-3  # breakpoints are kept inside (RATIO_EPS * m, (1 - RATIO_EPS) * m)
BREAKPOINTS = ("gaussian", "laplace", "search")
REGION_BIT_MODES = ("extra", "inside")


def region_bits_for(num_breakpoints: int) -> int:
    """Region bits needed to name one of ``num_breakpoints + 1`` pieces."""
    if num_breakpoints not in (1, 2, 3):
        raise ValueError(f"num_breakpoints must be 1, 2 or 3, got {num_breakpoints!r}")
    return math.ceil(math.log2(num_breakpoints + 1))


def code_bits(bits: int, num_breakpoints: int = 1, region_bit: str = "extra") -> int:
    """Stored bits per weight for nominal ``bits``-bit PWLQ (see the module docstring)."""
    check_bits(bits)
    check_choice(region_bit, REGION_BIT_MODES, "region_bit")
    width = bits + region_bits_for(num_breakpoints) if region_bit == "extra" else bits
    piece_layout(width, num_breakpoints)  # raises when too few bits are left for the index
    return width


def piece_layout(bits: int, num_breakpoints: int = 1) -> tuple[int, int]:
    """(region_bits, levels per piece and sign) for a ``bits``-wide code and ``num_breakpoints`` breakpoints."""
    check_bits(bits)
    region_bits = region_bits_for(num_breakpoints)
    index_bits = bits - region_bits - 1
    if index_bits < 0:
        raise ValueError(
            f"PWLQ with {num_breakpoints} breakpoint(s) needs at least {region_bits + 1} bits, got {bits}"
        )
    return region_bits, 2**index_bits


def _clip_breakpoint(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(p, m * RATIO_EPS), m * (1.0 - RATIO_EPS))


def gaussian_breakpoint(m: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Closed form for Gaussian rows: p = sigma * ln(0.8614 * m / sigma + 0.6079), clipped into (0, m)."""
    sigma = sigma.clamp_min(TINY)
    return _clip_breakpoint(sigma * torch.log(0.8614 * m / sigma + 0.6079), m)


def laplace_breakpoint(m: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Closed form for Laplacian rows: p = sigma * (0.8030 * sqrt(m / sigma) - 0.3167), clipped to (0, m)."""
    sigma = sigma.clamp_min(TINY)
    return _clip_breakpoint(sigma * (0.8030 * torch.sqrt(m / sigma) - 0.3167), m)


def make_grid(edges: torch.Tensor, levels: int, pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-piece (offsets, steps), each [C, n], from sorted piece edges [C, n+1] (first 0, last m).

    With ``pow2`` every step is rounded up to a power of two and the offsets are rebuilt cumulatively,
    so pieces still cover [0, m] and all levels are multiples of 2^k.
    """
    if not pow2:
        offsets = edges[:, :-1]
        steps = ((edges[:, 1:] - edges[:, :-1]) / levels).clamp_min(TINY)
        return offsets.contiguous(), steps
    n = edges.shape[1] - 1
    offs, steps = [], []
    off = torch.zeros_like(edges[:, 0])
    for j in range(n):
        span = (edges[:, j + 1] - off).clamp_min(edges[:, -1] * 1e-6).clamp_min(TINY)
        step = pow2_ceil(span / levels)
        offs.append(off)
        steps.append(step)
        off = off + levels * step
    return torch.stack(offs, 1), torch.stack(steps, 1)


def _piece_index(a: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Piece of each magnitude in ``a`` [C, N]: number of interior edges strictly below it."""
    j = torch.zeros(a.shape, dtype=torch.int64, device=a.device)
    for i in range(1, offsets.shape[1]):
        j += (a > offsets[:, i : i + 1]).to(torch.int64)
    return j


def _level_index(a: torch.Tensor, off: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.floor((a - off) / step).clamp_(0, levels - 1)


def pwlq_fake_abs(a: torch.Tensor, offsets: torch.Tensor, steps: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantized magnitudes for magnitudes ``a`` [C, N] (used by the searches; sign is symmetric)."""
    j = _piece_index(a, offsets)
    off = torch.gather(offsets, 1, j)
    step = torch.gather(steps, 1, j)
    return off + (_level_index(a, off, step, levels) + 0.5) * step


def pwlq_encode(
    w2d: torch.Tensor, offsets: torch.Tensor, steps: torch.Tensor, bits: int, region_bits: int
) -> torch.Tensor:
    """b-bit codes (int32, [C, N]) laid out as region | sign | index."""
    index_bits = bits - region_bits - 1
    levels = 2**index_bits
    a = w2d.abs()
    j = _piece_index(a, offsets)
    idx = _level_index(a, torch.gather(offsets, 1, j), torch.gather(steps, 1, j), levels).to(torch.int64)
    sign = (w2d < 0).to(torch.int64)
    return ((j << (index_bits + 1)) | (sign << index_bits) | idx).to(torch.int32)


def pwlq_rounding_grid(
    w2d: torch.Tensor, offsets: torch.Tensor, steps: torch.Tensor, bits: int, region_bits: int
) -> RoundingGrid:
    """AdaRound grid inside each weight's piece (piece and sign fixed by the float weight, index learned)."""
    index_bits = bits - region_bits - 1
    a = w2d.abs()
    j = _piece_index(a, offsets)
    off, step = torch.gather(offsets, 1, j), torch.gather(steps, 1, j)
    neg = (w2d < 0).to(torch.int64)
    base = (j << (index_bits + 1)) | (neg << index_bits)
    sign = 1.0 - 2.0 * neg.to(w2d.dtype)
    return RoundingGrid(t=(a - off) / step - 0.5, sign=sign, offset=off + 0.5 * step, step=step, base=base,
                        lo=0, hi=2**index_bits - 1)


def pwlq_decode(
    codes: torch.Tensor, offsets: torch.Tensor, steps: torch.Tensor, bits: int, region_bits: int
) -> torch.Tensor:
    """Float32 values [C, N] of codes made by :func:`pwlq_encode`."""
    index_bits = bits - region_bits - 1
    c = codes.to(torch.int64)
    j = c >> (index_bits + 1)
    if int(j.max()) >= offsets.shape[1]:
        raise ValueError("PWLQ code refers to a piece that does not exist (corrupt codes or parameters)")
    sign = (c >> index_bits) & 1
    idx = (c & (2**index_bits - 1)).to(torch.float32)
    mag = torch.gather(offsets, 1, j) + (idx + 0.5) * torch.gather(steps, 1, j)
    return torch.where(sign.bool(), -mag, mag)


def _edges(ratios: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Edges [C, k+2] from breakpoint ratios [C, k] (of m) and range m [C]."""
    zero = torch.zeros_like(m)[:, None]
    return torch.cat([zero, ratios * m[:, None], m[:, None]], dim=1)


def _row_mse(a: torch.Tensor, ratios: torch.Tensor, m: torch.Tensor, levels: int, pow2: bool) -> torch.Tensor:
    offsets, steps = make_grid(_edges(ratios, m), levels, pow2)
    return (pwlq_fake_abs(a, offsets, steps, levels) - a).pow(2).mean(dim=1)


def search_breakpoints(
    w2d: torch.Tensor,
    bits: int,
    num_breakpoints: int = 1,
    pow2: bool = False,
    extra: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """MSE-optimal breakpoint ratios p/m per row, [C, k], by a vectorised coarse-to-fine grid search.

    One breakpoint: grids of step 0.04, 0.005 and 0.001 around the running best; ``extra`` holds candidate
    ratio rows [C] (e.g. the closed forms) that are tried too, so the result is never worse than them.
    Two or three breakpoints: coordinate descent, each breakpoint searched between its neighbours.
    """
    _, levels = piece_layout(bits, num_breakpoints)
    a = w2d.abs()
    m = a.amax(dim=1).clamp_min(TINY)
    C = a.shape[0]
    lo, hi = RATIO_EPS, 1.0 - RATIO_EPS
    if num_breakpoints == 1:
        best = torch.full((C, 1), 0.5, device=a.device)
        best_err = torch.full((C,), float("inf"), device=a.device)

        def consider(r: torch.Tensor) -> None:
            nonlocal best, best_err
            r = r.clamp(lo, hi).reshape(C, 1)
            err = _row_mse(a, r, m, levels, pow2)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better[:, None], r, best)

        for r in torch.linspace(0.02, 0.98, 25).tolist():
            consider(torch.full((C,), r, device=a.device))
        for half, n in ((0.04, 17), (0.005, 11)):
            centre = best[:, 0].clone()
            for d in torch.linspace(-half, half, n).tolist():
                consider(centre + d)
        for r in extra or []:
            consider(r.to(a.device, torch.float32))
        return best
    # k = 2 or 3: start evenly spaced, then coordinate descent with a coarse and a fine pass per breakpoint
    k = num_breakpoints
    best = torch.linspace(0, 1, k + 2, device=a.device)[1:-1].repeat(C, 1)
    best_err = _row_mse(a, best, m, levels, pow2)
    for _ in range(3):
        for i in range(k):
            left = best[:, i - 1] if i > 0 else torch.zeros(C, device=a.device)
            right = best[:, i + 1] if i < k - 1 else torch.ones(C, device=a.device)
            width = right - left
            passes = ((torch.linspace(0.05, 0.95, 10), False), (torch.linspace(-0.05, 0.05, 7), True))
            for ts, around_best in passes:
                base = best[:, i].clone()
                for t in ts.tolist():
                    cand = base + t * width if around_best else left + t * width
                    cand = torch.minimum(torch.maximum(cand, left + RATIO_EPS), right - RATIO_EPS)
                    trial = best.clone()
                    trial[:, i] = cand
                    err = _row_mse(a, trial, m, levels, pow2)
                    better = err < best_err
                    best_err = torch.where(better, err, best_err)
                    best = torch.where(better[:, None], trial, best)
    return best


def pwlq_params(
    w2d: torch.Tensor,
    bits: int,
    breakpoint: str = "gaussian",
    num_breakpoints: int = 1,
    pow2: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(offsets [C, n], steps [C, n], region_bits) for rows of ``w2d`` [C, N]."""
    check_finite(w2d, "weight")
    check_choice(breakpoint, BREAKPOINTS, "breakpoint")
    region_bits, levels = piece_layout(bits, num_breakpoints)
    if num_breakpoints > 1 and breakpoint != "search":
        raise ValueError(f"{num_breakpoints} breakpoints need breakpoint='search' (closed forms are for one)")
    a = w2d.abs()
    m = a.amax(dim=1).clamp_min(TINY)
    sigma = w2d.std(dim=1, correction=0) if w2d.shape[1] > 1 else m
    if breakpoint == "gaussian":
        ratios = (gaussian_breakpoint(m, sigma) / m)[:, None]
    elif breakpoint == "laplace":
        ratios = (laplace_breakpoint(m, sigma) / m)[:, None]
    else:
        extra = None
        if num_breakpoints == 1:
            extra = [gaussian_breakpoint(m, sigma) / m, laplace_breakpoint(m, sigma) / m]
        ratios = search_breakpoints(w2d, bits, num_breakpoints, pow2, extra)
    offsets, steps = make_grid(_edges(ratios, m), levels, pow2)
    return offsets, steps, region_bits


def fake_quant_pwlq(
    w2d: torch.Tensor, bits: int, breakpoint: str = "gaussian", num_breakpoints: int = 1, pow2: bool = False
) -> torch.Tensor:
    """PWLQ quantize-dequantize of rows of ``w2d`` [C, N] (no bias correction)."""
    offsets, steps, rb = pwlq_params(w2d, bits, breakpoint, num_breakpoints, pow2)
    return pwlq_decode(pwlq_encode(w2d, offsets, steps, bits, rb), offsets, steps, bits, rb)
