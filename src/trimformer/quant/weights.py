"""Weight quantization: codes plus per-channel parameters, with exact dequantization and bias correction.

The scheme-specific part (codes and their parameters) comes from the config type's handler in
:mod:`trimformer.quant.handlers`; granularity and bias correction are the same for every scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._checks import as_channels, check_finite
from .config import BaseQuantConfig
from .handlers import handler_for, handler_for_scheme


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

    ``scheme`` names the handler that decodes the codes with ``params`` (uniform: ``scale``; pwlq: ``offsets`` /
    ``steps`` per piece, see :mod:`trimformer.quant.pwlq`). ``bits`` is the stored code width (for PWLQ with
    ``region_bit="extra"`` the nominal bits plus the region bits). The grid value is then multiplied by
    ``gain[c]`` and shifted by ``shift[c]`` (bias correction; gain 1, shift 0 when off) and cast to ``dtype``.
    """

    scheme: str
    bits: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    codes: torch.Tensor
    gain: torch.Tensor
    shift: torch.Tensor
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    region_bits: int = 0

    def grid_values(self) -> torch.Tensor:
        """Dequantized values before bias correction, float32 [C, N]."""
        return handler_for_scheme(self.scheme).decode(self.codes, self.params, self.bits, self.region_bits)

    def dequantize(self) -> torch.Tensor:
        """Float weight of the original shape and dtype."""
        q = self.grid_values() * self.gain[:, None] + self.shift[:, None]
        return q.reshape(self.shape).to(self.dtype)


def quantize_weight(w: torch.Tensor, config: BaseQuantConfig) -> QuantizedWeight:
    """Quantize a weight tensor ([C_out, ...]) with ``config`` at ``config.wbits`` (use
    ``config.weight_config(name)`` for a layer's own bits); raises ValueError on NaN/inf."""
    handler = handler_for(config)
    check_finite(w, "weight")
    w2d = as_channels(w, config.per_channel)
    enc = handler.encode(w2d, config)
    if config.bias_correction:
        gain, shift = bias_correction_params(w2d, handler.decode(enc.codes, enc.params, enc.bits, enc.region_bits))
    else:
        gain, shift = torch.ones(w2d.shape[0]), torch.zeros(w2d.shape[0])
    return QuantizedWeight(
        scheme=config.scheme,
        bits=enc.bits,
        shape=tuple(w.shape),
        dtype=w.dtype,
        codes=enc.codes,
        gain=gain.to(w2d.device),
        shift=shift.to(w2d.device),
        params=enc.params,
        region_bits=enc.region_bits,
    )


def fake_quantize_weight(w: torch.Tensor, config: BaseQuantConfig) -> torch.Tensor:
    """Quantize-dequantize ``w`` with ``config`` (same shape and dtype)."""
    return quantize_weight(w, config).dequantize()
