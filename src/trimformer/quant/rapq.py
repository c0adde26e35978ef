"""RAPQ stage 1: every layer's power-of-two weight exponents learned jointly on the network output, then rounded,
so that every scale is exactly 2^integer (see :class:`~trimformer.quant.recon_config.RAPQConfig`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import as_channels
from .adaround import init_v, rectified_sigmoid, round_reg
from .fisher import first_tensor
from .handlers import exponent_of, pow2_of
from .modules import QuantConv2d, QuantLinear
from .recon_config import RAPQConfig
from .reconstruct import Forward, _quant_layers, _take, annealed_steps, float_mode, lp_loss, set_codes
from .uniform import mse_clip_absmax, qmax_symmetric, quantize_symmetric, symmetric_scale


def pow2_weight_error(w2d: torch.Tensor, exponent: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row mean squared error of ``w2d`` [C, K] rounded to nearest on the grid of step 2^exponent [C]."""
    qmax = qmax_symmetric(bits)
    scale = torch.exp2(exponent)[:, None]
    return ((torch.round(w2d / scale).clamp(-qmax, qmax) * scale - w2d) ** 2).mean(dim=1)


def exponent_start(w2d: torch.Tensor, e0: torch.Tensor, bits: int) -> torch.Tensor:
    """Initial h in [0, 1] of each row's relaxed exponent floor(e0) + h: its distance from 1/2 is that of e0's
    fraction, its side that of the power of two (floor or floor + 1) with the smaller weight error. Starting from
    the fraction alone rounds a scale down whenever it is under 2^(floor + 1/2), which at 8 bits clips the largest
    weights (measured: RAPQ W8A8 lost 4-12 points on the Fashion-MNIST CNNs, see docs/quantization.md)."""
    floor = torch.floor(e0)
    frac = e0 - floor
    ceil_better = pow2_weight_error(w2d, floor + 1, bits) < pow2_weight_error(w2d, floor, bits)
    far = torch.maximum(torch.maximum(frac, 1 - frac), torch.full_like(frac, 0.501))  # (1/2, 1]: a side, always
    return torch.where(ceil_better, far, 1 - far).clamp(0.0, 0.999)


class _LearnedExponent:
    """Continuous power-of-two exponent per row, 2^(floor(e0) + h(a)), weights rounded straight-through."""

    def __init__(self, layer: QuantLinear | QuantConv2d) -> None:
        if layer.float_weight is None:
            raise ValueError("RAPQ needs the float weights: quantize the float model again")
        qw = layer.qweight
        self.layer = layer
        self.bits = qw.bits
        self.w2d = as_channels(layer.float_weight, layer.wconfig.per_channel)
        e0 = torch.log2(symmetric_scale(mse_clip_absmax(self.w2d, qw.bits), qw.bits))
        self.floor = torch.floor(e0)
        self.a = nn.Parameter(init_v(exponent_start(self.w2d, e0, qw.bits)))
        qmax = qmax_symmetric(qw.bits)

        def weight() -> torch.Tensor:
            scale = torch.exp2(self.floor + rectified_sigmoid(self.a))[:, None]
            t = self.w2d / scale
            q = (t + (torch.round(t) - t).detach()).clamp(-qmax, qmax)
            return (q * scale).reshape(qw.shape).to(qw.dtype)

        layer.soft_weight = weight

    def reg(self, beta: float) -> torch.Tensor:
        return round_reg(rectified_sigmoid(self.a), beta)

    @torch.no_grad()
    def finish(self) -> None:
        exponent = exponent_of(pow2_of((self.floor + (self.a >= 0).float()).to(torch.int64)))
        qw = self.layer.qweight
        qw.params = {"exponent": exponent}
        set_codes(self.layer, self.w2d, quantize_symmetric(self.w2d, pow2_of(exponent), self.bits))


@torch.enable_grad()
def learn_exponents(model: nn.Module, batches: list[Any], fwd: Forward, cfg: RAPQConfig) -> dict[str, float]:
    """RAPQ stage 1: every layer's exponents trained jointly on the network output error, then rounded."""
    with float_mode(model):
        targets = [first_tensor(fwd(model, b)).detach() for b in batches]
    learned = [_LearnedExponent(m) for m in _quant_layers(model)]
    opt = torch.optim.Adam([e.a for e in learned], lr=cfg.exp_lr)
    gen = torch.Generator().manual_seed(cfg.seed)

    def minibatch_loss(i: int, rows: torch.Tensor, size: int) -> torch.Tensor:
        return lp_loss(first_tensor(fwd(model, _take(batches[i], rows, size))), targets[i][rows], 2.0)

    try:
        annealed_steps(opt, cfg, cfg.exp_iters, targets, minibatch_loss, cfg.exp_reg_weight,
                       lambda beta: sum(e.reg(beta) for e in learned), gen)
    finally:
        for e in learned:
            e.finish()
    with torch.no_grad():
        err = [float(lp_loss(first_tensor(fwd(model, b)), t, 2.0)) for b, t in zip(batches, targets, strict=True)]
    return {"output_loss": sum(err) / len(err)}
