"""The table from config type to the code that quantizes a weight with it.

A handler turns the rows of a weight ([C, N] float32) into integer codes plus per-row parameters
(:meth:`WeightHandler.encode`), rebuilds the grid values from them (:meth:`WeightHandler.decode`), and says
how the parameters are stored in packed files. Bias correction, granularity, layer selection, activation
quantizers and bit packing are the same for every scheme and live elsewhere.

Adding a scheme: a config (a :class:`~trimformer.quant.config.BaseQuantConfig` subclass naming its
``scheme``), a handler (a :class:`WeightHandler` subclass with a new ``format_id``), and one line in
:data:`HANDLERS`. Nothing else branches on the scheme.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ._checks import check_choice
from .adaround import RoundingGrid
from .config import BaseQuantConfig, PWLQConfig, UniformConfig
from .pwlq import code_bits, pwlq_decode, pwlq_encode, pwlq_params, pwlq_rounding_grid
from .recon_config import AdaRoundConfig, BRECQConfig, PWLQAdaRoundConfig, RAPQConfig
from .uniform import dequantize_symmetric, mse_clip_absmax, qmax_symmetric, quantize_symmetric, symmetric_scale


@dataclass(frozen=True)
class Encoded:
    """Codes [C, N] (int32 in [0, 2^bits)) of a weight's rows with the per-row parameters that decode them."""

    codes: torch.Tensor
    bits: int  # stored code width
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    region_bits: int = 0  # leading code bits that select a piece (PWLQ); 0 for single-grid schemes


class WeightHandler(ABC):
    """How one scheme quantizes weight rows. ``format_id`` names the scheme in packed files: never reuse one."""

    format_id: ClassVar[int]

    @abstractmethod
    def encode(self, w2d: torch.Tensor, config: Any) -> Encoded:
        """Quantize rows ``w2d`` [C, N] (float32, finite) with ``config`` (its ``wbits`` already per layer)."""

    @abstractmethod
    def decode(self, codes: torch.Tensor, params: Mapping[str, torch.Tensor], bits: int,
               region_bits: int) -> torch.Tensor:
        """Grid values [C, N] float32 of ``codes`` (before bias correction)."""

    def rounding_grid(self, w2d: torch.Tensor, params: Mapping[str, torch.Tensor], bits: int,
                      region_bits: int) -> RoundingGrid:
        """The grid AdaRound rounds ``w2d`` on (schemes that support reconstruction override this)."""
        raise ValueError(f"{type(self).__name__} does not support learned rounding")

    def pack_params(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors stored in a packed file for ``params`` (default: as they are)."""
        return dict(params)

    def unpack_params(self, stored: Mapping[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`pack_params`."""
        return dict(stored)


class UniformHandler(WeightHandler):
    """Symmetric uniform grid per row: value = (code - qmax) * scale."""

    format_id = 0

    def encode(self, w2d: torch.Tensor, config: UniformConfig) -> Encoded:
        bits, pow2 = config.wbits, config.pow2_scale
        absmax = mse_clip_absmax(w2d, bits, pow2) if config.weight_clip == "mse" else w2d.abs().amax(1)
        scale = symmetric_scale(absmax, bits, pow2)
        return Encoded(quantize_symmetric(w2d, scale, bits), bits, {"scale": scale})

    def decode(self, codes: torch.Tensor, params: Mapping[str, torch.Tensor], bits: int,
               region_bits: int) -> torch.Tensor:
        return dequantize_symmetric(codes, self.row_scale(params), bits)

    def row_scale(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Step size [C] of each row's symmetric grid."""
        return params["scale"]

    def rounding_grid(self, w2d: torch.Tensor, params: Mapping[str, torch.Tensor], bits: int,
                      region_bits: int) -> RoundingGrid:
        scale = self.row_scale(params).to(w2d.device)[:, None]
        qmax = qmax_symmetric(bits)
        one = torch.ones((), dtype=w2d.dtype, device=w2d.device)
        return RoundingGrid(t=w2d / scale, sign=one, offset=torch.zeros_like(one), step=scale,
                            base=torch.full((), qmax, dtype=torch.int64, device=w2d.device), lo=-qmax, hi=qmax)


class AdaRoundHandler(UniformHandler):
    """The uniform grid; ``calibrate`` then learns each weight's rounding (codes change, the scale does not)."""

    format_id = 2


class BRECQHandler(AdaRoundHandler):
    """As :class:`AdaRoundHandler`, rounding learned block by block."""

    format_id = 3


EXPONENT_DTYPE = torch.int8  # RAPQ's stored exponents: scales 2^-128 .. 2^127


def exponent_of(scale: torch.Tensor) -> torch.Tensor:
    """Integer e [C] (int8) with scale == 2^e exactly; ValueError when a scale is not a power of two."""
    mantissa, exp = torch.frexp(scale.to(torch.float32))
    if not bool((mantissa == 0.5).all()):
        raise ValueError("scale is not an exact power of two")
    e = exp.to(torch.int64) - 1
    info = torch.iinfo(EXPONENT_DTYPE)
    if int(e.min()) < info.min or int(e.max()) > info.max:
        raise ValueError(f"power-of-two exponent outside [{info.min}, {info.max}]: cannot be stored")
    return e.to(EXPONENT_DTYPE)


def pow2_of(exponent: torch.Tensor) -> torch.Tensor:
    """2^exponent as float32, exact (no exp/log rounding)."""
    return torch.ldexp(torch.ones(exponent.shape, dtype=torch.float32, device=exponent.device),
                       exponent.to(torch.int32))


class RAPQHandler(UniformHandler):
    """Symmetric grid whose step is 2^exponent: only the small integer ``exponent`` [C] is stored."""

    format_id = 4

    def encode(self, w2d: torch.Tensor, config: RAPQConfig) -> Encoded:
        bits = config.wbits
        scale = symmetric_scale(mse_clip_absmax(w2d, bits, pow2=True), bits, pow2=True)
        return Encoded(quantize_symmetric(w2d, scale, bits), bits, {"exponent": exponent_of(scale)})

    def row_scale(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return pow2_of(params["exponent"])


class PWLQHandler(WeightHandler):
    """Piecewise linear grid per row: ``offsets`` / ``steps`` per piece, see :mod:`trimformer.quant.pwlq`."""

    format_id = 1

    def encode(self, w2d: torch.Tensor, config: PWLQConfig) -> Encoded:
        bits = code_bits(config.wbits, config.num_breakpoints, config.region_bit)
        offsets, steps, region_bits = pwlq_params(w2d, bits, config.breakpoint, config.num_breakpoints,
                                                  config.pow2_scale)
        codes = pwlq_encode(w2d, offsets, steps, bits, region_bits)
        return Encoded(codes, bits, {"offsets": offsets, "steps": steps}, region_bits)

    def decode(self, codes: torch.Tensor, params: Mapping[str, torch.Tensor], bits: int,
               region_bits: int) -> torch.Tensor:
        return pwlq_decode(codes, params["offsets"], params["steps"], bits, region_bits)

    def rounding_grid(self, w2d: torch.Tensor, params: Mapping[str, torch.Tensor], bits: int,
                      region_bits: int) -> RoundingGrid:
        return pwlq_rounding_grid(w2d, params["offsets"], params["steps"], bits, region_bits)

    def pack_params(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"offsets": params["offsets"][:, 1:], "steps": params["steps"]}  # offsets[:, 0] is always 0

    def unpack_params(self, stored: Mapping[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
        offsets = stored["offsets"]
        return {"offsets": torch.cat([torch.zeros(rows, 1, dtype=offsets.dtype), offsets], dim=1),
                "steps": stored["steps"]}


class PWLQAdaRoundHandler(PWLQHandler):
    """PWLQ's pieces; ``calibrate`` then learns each weight's rounding inside its piece."""

    format_id = 5


HANDLERS: dict[type[BaseQuantConfig], WeightHandler] = {
    PWLQConfig: PWLQHandler(),
    UniformConfig: UniformHandler(),
    AdaRoundConfig: AdaRoundHandler(),
    BRECQConfig: BRECQHandler(),
    RAPQConfig: RAPQHandler(),
    PWLQAdaRoundConfig: PWLQAdaRoundHandler(),
}


def _names() -> str:
    return ", ".join(t.__name__ for t in HANDLERS)


def handler_for(config: Any) -> WeightHandler:
    """The handler of ``config``'s type; a clear ValueError for anything that is not a registered config."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        hint = "; for a dict use config_from_dict(d)" if isinstance(config, Mapping) else ""
        raise ValueError(f"config must be one of {_names()}, got {type(config).__name__}{hint}")
    return handler


def config_type(scheme: str) -> type[BaseQuantConfig]:
    """The config type whose ``scheme`` is ``scheme``."""
    by_scheme = {t.scheme: t for t in HANDLERS}
    return by_scheme[check_choice(scheme, tuple(by_scheme), "quantization scheme")]


def handler_for_scheme(scheme: str) -> WeightHandler:
    return HANDLERS[config_type(scheme)]


def handler_for_format_id(format_id: int) -> tuple[str, WeightHandler]:
    """(scheme, handler) stored under ``format_id`` in packed files."""
    for t, handler in HANDLERS.items():
        if handler.format_id == format_id:
            return t.scheme, handler
    raise ValueError(f"packed weight has unknown scheme id {format_id}; known: "
                     f"{', '.join(f'{h.format_id} ({t.scheme})' for t, h in HANDLERS.items())}")


def config_from_dict(d: Mapping[str, Any]) -> BaseQuantConfig:
    """The config a ``to_dict()`` dict describes, of the type its ``"scheme"`` names (old flat dicts too)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a quantization config must be a dict, got {type(d).__name__}")
    if "scheme" not in d:
        raise ValueError(f"quantization config dict has no 'scheme'; expected one of "
                         f"{', '.join(repr(t.scheme) for t in HANDLERS)}")
    return config_type(d["scheme"]).from_dict(d)
