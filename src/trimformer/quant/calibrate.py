"""Activation quantizers and their calibration (record ranges on a few batches, then freeze).

Lifecycle: ``quantize_`` installs an :class:`ActQuantizer` at the input of each quantized layer;
inside ``with calibration(model):`` (or ``calibrate(model, batches)``) they pass activations through in
float and record statistics; on exit the clipping range is fixed. Afterwards they fake-quantize.
Using an uncalibrated quantizer raises RuntimeError instead of silently running in float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .act_pwlq import act_levels, fake_quant_act_pwlq, is_one_sided, search_act_breakpoint
from .config import ActSpec
from .uniform import asymmetric_qparams, fake_quant_asymmetric

MSE_SAMPLE = 4096  # activations kept per batch for the MSE range search


def pow2_range(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """(lo, hi) whose asymmetric ``bits`` grid has a power-of-two step (the nearest in log scale) and an integer
    zero point: both ends are integer multiples of the step, so ``asymmetric_qparams`` gives the step exactly."""
    n = 2**bits - 1
    step = 2.0 ** round(math.log2(max((hi - lo) / n, 1e-30)))
    zp = min(max(round(-lo / step), 0), n)
    return -zp * step, (n - zp) * step


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, zero_point: float, bits: int) -> torch.Tensor:
    """Asymmetric fake quantization with a trainable ``step`` (straight-through rounding, LSQ's gradient)."""
    q = x / step
    q = q + (torch.round(q) - q).detach()
    return (torch.clamp(q + zero_point, 0, 2**bits - 1) - zero_point) * step


class RangeObserver:
    """Accumulates per-batch range estimates for one activation quantizer."""

    def __init__(self, spec: ActSpec, seed: int = 0) -> None:
        self.spec = spec
        self.n = 0
        self.lo_sum = 0.0
        self.hi_sum = 0.0
        self.lo_min = math.inf
        self.hi_max = -math.inf
        self.samples: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).to(torch.float32).cpu()
        if flat.numel() == 0:
            return
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("activation contains NaN/inf during calibration")
        self.n += 1
        self.lo_min = min(self.lo_min, float(flat.min()))
        self.hi_max = max(self.hi_max, float(flat.max()))
        clip = self.spec.clip
        if clip == "topk_median":  # paper: median of the top-k values of this batch (and bottom-k for lo)
            k = min(self.spec.topk, flat.numel())
            self.hi_sum += float(flat.topk(k).values.quantile(0.5))
            self.lo_sum += float(-((-flat).topk(k).values.quantile(0.5)))
        elif clip == "percentile":
            n = flat.numel()
            q = float(self.spec.percentile) / 100.0
            self.hi_sum += float(flat.kthvalue(max(1, min(n, math.ceil(q * n)))).values)
            self.lo_sum += float(flat.kthvalue(max(1, min(n, math.floor((1.0 - q) * n) + 1))).values)
        if clip == "mse" or self.spec.scheme == "pwlq":  # both need a sample of the values themselves
            if flat.numel() > MSE_SAMPLE:
                flat = flat[torch.randint(flat.numel(), (MSE_SAMPLE,), generator=self.gen)]
            self.samples.append(flat)

    def range(self) -> tuple[float, float] | None:
        """Final (lo, hi), or None if no batch was seen."""
        if self.n == 0:
            return None
        clip = self.spec.clip
        if clip in ("topk_median", "percentile"):
            return self.lo_sum / self.n, self.hi_sum / self.n
        if clip == "minmax":
            return self.lo_min, self.hi_max
        return self._mse_range()

    def _mse_range(self) -> tuple[float, float]:
        x = torch.cat(self.samples)
        lo0, hi0 = torch.tensor(min(self.lo_min, 0.0)), torch.tensor(max(self.hi_max, 0.0))
        best, best_err = (float(lo0), float(hi0)), math.inf
        for alpha in torch.linspace(0.05, 1.0, 96).tolist():
            lo, hi = lo0 * alpha, hi0 * alpha
            err = float((fake_quant_asymmetric(x, lo, hi, self.spec.bits) - x).pow(2).mean())
            if err < best_err:
                best, best_err = (float(lo), float(hi)), err
        return best


class ActQuantizer(nn.Module):
    """Per-tensor activation fake quantizer with a calibrated range in buffers ``lo``/``hi`` (and, for PWLQ,
    the searched ``breakpoint``)."""

    def __init__(self, spec: ActSpec, name: str = "") -> None:
        super().__init__()
        self.spec = spec
        self.name = name
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        if spec.scheme == "pwlq":
            self.register_buffer("breakpoint", torch.zeros(()))
        self.observer: RangeObserver | None = None
        self.log_step: nn.Parameter | None = None  # set while reconstruction learns the step (LSQ-style)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            return x
        if self.log_step is not None:
            return lsq_fake_quant(x, self.log_step.exp(), self._zero_point(), self.spec.bits)
        if not bool(self.calibrated):
            raise RuntimeError(
                f"activation quantizer of {self.name or 'a layer'} is not calibrated; run "
                "calibrate(model, batches) first, or quantize with act=None for weights only"
            )
        if self.spec.scheme == "pwlq":
            lo, hi, levels, one_sided = self._pwlq_layout()
            out = fake_quant_act_pwlq(x, lo, hi, float(self.breakpoint), levels, one_sided)
        else:
            out = fake_quant_asymmetric(x, self.lo, self.hi, self.spec.bits)
        if torch.is_grad_enabled() and x.requires_grad:
            out = self._straight_through(x, out)
        return out

    def _straight_through(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` in value; in gradient, the identity where ``x`` lies inside the range and zero where it is
        clipped (the straight-through estimator of BRECQ and QDrop). Without it rounding has a zero gradient,
        and block reconstruction and RAPQ's network-wide exponents could not learn any layer that feeds this
        quantizer."""
        inside = (x >= self.lo.to(x.dtype)) & (x <= self.hi.to(x.dtype))
        return torch.where(inside, out.detach() + (x - x.detach()), out)  # x - x.detach() is exactly 0

    def set_breakpoint(self, sample: torch.Tensor) -> None:
        """PWLQ: search the breakpoint on a calibration ``sample`` (after :meth:`set_range`)."""
        lo, hi, levels, one_sided = self._pwlq_layout()
        self.breakpoint.fill_(search_act_breakpoint(sample, lo, hi, levels, one_sided))

    def _pwlq_layout(self) -> tuple[float, float, int, bool]:
        """(lo, hi, levels per piece, one-sided?) of the calibrated range, for PWLQ activations."""
        lo, hi = float(self.lo), float(self.hi)
        one_sided = is_one_sided(lo, hi)
        return lo, hi, act_levels(self.spec.bits, one_sided, self.spec.region_bit), one_sided

    def set_range(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.spec.pow2:
            lo, hi = pow2_range(lo, hi, self.spec.bits)
        self.lo.fill_(lo)
        self.hi.fill_(hi)
        self.calibrated.fill_(True)

    def _zero_point(self) -> float:
        _, zp = asymmetric_qparams(self.lo, self.hi, self.spec.bits)
        return float(zp)

    def start_learning(self) -> nn.Parameter:
        """Make the step of a calibrated uniform quantizer trainable (zero point fixed); returns it."""
        if self.spec.scheme != "uniform" or not bool(self.calibrated):
            raise ValueError(f"only a calibrated uniform activation quantizer can learn its step ({self.name})")
        scale, _ = asymmetric_qparams(self.lo, self.hi, self.spec.bits)
        self.log_step = nn.Parameter(scale.log().reshape(()).clone())
        return self.log_step

    def finish_learning(self) -> None:
        """Freeze the learned step back into ``lo`` / ``hi`` (snapped to a power of two when ``spec.pow2``)."""
        assert self.log_step is not None
        step, zp, n = float(self.log_step.detach().exp()), self._zero_point(), 2**self.spec.bits - 1
        self.log_step = None
        self.set_range(-zp * step, (n - zp) * step)

    def extra_repr(self) -> str:
        rng = f"({float(self.lo):.4g}, {float(self.hi):.4g})"
        extra = f", pwlq breakpoint={float(self.breakpoint):.4g}" if self.spec.scheme == "pwlq" else ""
        return f"bits={self.spec.bits}, clip={self.spec.clip}, range={rng}{extra}"


@contextmanager
def calibration(model: nn.Module) -> Iterator[list[str]]:
    """Record activation ranges of every :class:`ActQuantizer` in ``model`` while the block runs.

    Yields a list that, after the block, holds the names of quantizers that saw no data (left uncalibrated).
    The model runs in eval mode inside the block; its train/eval flags are restored afterwards.
    """
    quantizers = [(n, m) for n, m in model.named_modules() if isinstance(m, ActQuantizer)]
    if not quantizers:
        raise ValueError("model has no activation quantizers; call quantize_ with a config whose act is set")
    modes = {m: m.training for m in model.modules()}
    for i, (_, q) in enumerate(quantizers):
        q.observer = RangeObserver(q.spec, seed=i)
    unseen: list[str] = []
    model.eval()
    try:
        yield unseen
        for name, q in quantizers:
            assert q.observer is not None
            rng = q.observer.range()
            if rng is None:
                unseen.append(name)
            else:
                q.set_range(*rng)
                if q.spec.scheme == "pwlq":
                    q.set_breakpoint(torch.cat(q.observer.samples))
    finally:
        for _, q in quantizers:
            q.observer = None
        for m, training in modes.items():
            m.training = training


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> list[str]:
    """Run ``batches`` through ``model`` (no grad) to calibrate activation ranges.

    A batch is passed as ``model(**batch)`` (dict / BatchEncoding), ``model(*batch)`` (tuple/list) or ``model(batch)``,
    unless ``forward(model, batch)`` is given. Returns the names of quantizers that saw no data.
    """
    fwd = forward or _default_forward
    with torch.no_grad(), calibration(model) as unseen:
        for batch in batches:
            fwd(model, batch)
    return unseen
