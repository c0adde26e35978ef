"""Weight quantization: codes plus per-channel parameters, with exact dequantization and bias correction."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import as_channels, check_finite
from .config import WeightSpec
from .pwlq import code_bits, pwlq_decode, pwlq_encode, pwlq_params
from .uniform import dequantize_symmetric, mse_clip_absmax, quantize_symmetric, symmetric_scale


def bias_correction_params(w2d: torch.Tensor, q2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (gain, shift) so that ``q * gain + shift`` has the mean and std of ``w`` (data free).

    This is the paper's q <- (q + mean(w) - mean(q)) * std(w) / std(q) with the mean restored after the
    rescale, i.e. (q - mean(q)) * std(w) / std(q) + mean(w); the paper's literal order leaves the mean off by
    mean(w) * (std(w)/std(q) - 1). Rows whose quantized std is zero only get the mean shift.
    """
    mu_w, mu_q = w2d.mean(dim=1), q2d.mean(dim=1)
    sd_w, sd_q = w2d.std(dim=1, correction=0), q2d.std(dim=1, correction=0)
    gain = torch.where(sd_q > 0, sd_w / sd_q.clamp_min(1e-30), torch.ones_like(sd_q))
    return gain, mu_w - mu_q * gain


@dataclass
class QuantizedWeight:
    """Integer codes [C, N] with what is needed to rebuild the float weight bit-exactly.

    ``bits`` is the stored code width (for PWLQ with ``region_bit="extra"`` the nominal bits plus the region
    bits). uniform: value = (code - qmax) * scale[c]; pwlq: see :mod:`trimformer.quant.pwlq` (offsets/steps per
    piece). Then value * gain[c] + shift[c] (bias correction; gain 1, shift 0 when off), cast to ``dtype``.
    """

    scheme: str
    bits: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    codes: torch.Tensor
    gain: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    steps: torch.Tensor | None = None
    region_bits: int = 0

    def grid_values(self) -> torch.Tensor:
        """Dequantized values before bias correction, float32 [C, N]."""
        if self.scheme == "uniform":
            assert self.scale is not None
            return dequantize_symmetric(self.codes, self.scale, self.bits)
        assert self.offsets is not None and self.steps is not None
        return pwlq_decode(self.codes, self.offsets, self.steps, self.bits, self.region_bits)

    def dequantize(self) -> torch.Tensor:
        """Float weight of the original shape and dtype."""
        q = self.grid_values() * self.gain[:, None] + self.shift[:, None]
        return q.reshape(self.shape).to(self.dtype)


def quantize_weight(w: torch.Tensor, spec: WeightSpec) -> QuantizedWeight:
    """Quantize a weight tensor ([C_out, ...]) following ``spec``; raises ValueError on NaN/inf."""
    check_finite(w, "weight")
    w2d = as_channels(w, spec.per_channel)
    scale = offsets = steps = None
    region_bits = 0
    bits = spec.bits
    if spec.scheme == "uniform":
        absmax = mse_clip_absmax(w2d, spec.bits, spec.pow2_scale) if spec.clip == "mse" else w2d.abs().amax(1)
        scale = symmetric_scale(absmax, spec.bits, spec.pow2_scale)
        codes = quantize_symmetric(w2d, scale, spec.bits)
        q2d = dequantize_symmetric(codes, scale, spec.bits)
    else:
        bits = code_bits(spec.bits, spec.num_breakpoints, spec.region_bit)
        offsets, steps, region_bits = pwlq_params(w2d, bits, spec.breakpoint, spec.num_breakpoints, spec.pow2_scale)
        codes = pwlq_encode(w2d, offsets, steps, bits, region_bits)
        q2d = pwlq_decode(codes, offsets, steps, bits, region_bits)
    if spec.bias_correction:
        gain, shift = bias_correction_params(w2d, q2d)
    else:
        gain, shift = torch.ones(w2d.shape[0]), torch.zeros(w2d.shape[0])
    return QuantizedWeight(
        scheme=spec.scheme,
        bits=bits,
        shape=tuple(w.shape),
        dtype=w.dtype,
        codes=codes,
        gain=gain.to(w2d.device),
        shift=shift.to(w2d.device),
        scale=scale,
        offsets=offsets,
        steps=steps,
        region_bits=region_bits,
    )


def fake_quantize_weight(w: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """Quantize-dequantize ``w`` following ``spec`` (same shape and dtype)."""
    return quantize_weight(w, spec).dequantize()
