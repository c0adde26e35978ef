"""Quantization recipe as dataclasses that round-trip through JSON (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

from ._checks import check_bits, check_choice
from .pwlq import BREAKPOINTS, REGION_BIT_MODES, code_bits

SCHEMES = ("pwlq", "uniform")
WEIGHT_CLIPS = ("minmax", "mse")
ACT_CLIPS = ("topk_median", "percentile", "mse", "minmax")


def _check_bool(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be a bool, got {value!r}")


@dataclass(frozen=True)
class WeightSpec:
    """How one weight tensor is quantized (resolved from a :class:`QuantConfig` for one layer)."""

    scheme: str = "pwlq"
    bits: int = 4
    per_channel: bool = True
    breakpoint: str = "gaussian"
    num_breakpoints: int = 1
    bias_correction: bool = True
    pow2_scale: bool = False
    clip: str = "minmax"
    region_bit: str = "extra"

    def __post_init__(self) -> None:
        check_choice(self.scheme, SCHEMES, "scheme")
        check_bits(self.bits, "weight bits")
        check_choice(self.breakpoint, BREAKPOINTS, "breakpoint")
        check_choice(self.clip, WEIGHT_CLIPS, "weight_clip")
        check_choice(self.region_bit, REGION_BIT_MODES, "region_bit")
        for name in ("per_channel", "bias_correction", "pow2_scale"):
            _check_bool(getattr(self, name), name)
        if self.scheme == "pwlq":
            code_bits(self.bits, self.num_breakpoints, self.region_bit)  # raises on too few bits / bad count
            if self.num_breakpoints > 1 and self.breakpoint != "search":
                raise ValueError("num_breakpoints > 1 requires breakpoint='search'")
            if self.clip != "minmax":
                raise ValueError("weight_clip='mse' applies to scheme='uniform' only (PWLQ keeps max|w|)")


@dataclass(frozen=True)
class ActSpec:
    """How the input activation of one layer is quantized, per tensor: asymmetric uniform, or PWLQ with one
    searched breakpoint (see :mod:`trimformer.quant.act_pwlq`)."""

    bits: int = 8
    clip: str = "topk_median"
    topk: int = 10
    percentile: float = 99.99
    scheme: str = "uniform"
    region_bit: str = "extra"

    def __post_init__(self) -> None:
        check_bits(self.bits, "activation bits")
        check_choice(self.scheme, SCHEMES, "act_scheme")
        check_choice(self.region_bit, REGION_BIT_MODES, "region_bit")
        if self.scheme == "pwlq":
            code_bits(self.bits, 1, self.region_bit)
        check_choice(self.clip, ACT_CLIPS, "act_clip")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise ValueError(f"act_topk must be a positive int, got {self.topk!r}")
        if not isinstance(self.percentile, (int, float)) or not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"act_percentile must be in (50, 100], got {self.percentile!r}")


@dataclass
class QuantConfig:
    """Post-training quantization recipe for ``quantize_``.

    scheme: "pwlq" or "uniform" weights; wbits / abits: weight / input-activation bits (abits None: weights
    only); breakpoint: PWLQ breakpoint rule ("gaussian", "laplace" closed forms or "search");
    num_breakpoints: 1 (paper) or 2-3 (search only); region_bit: "extra" (paper: b-bit pieces plus the
    region bit, b+1 bits stored) or "inside" (b bits in total, see :mod:`trimformer.quant.pwlq`);
    bias_correction: data-free per-channel mean/std fix;
    per_channel: per output channel (else per tensor); weight_clip: "minmax" or "mse" (uniform only);
    act_clip: "topk_median" (paper), "percentile", "mse" or "minmax"; act_scheme: "uniform" (asymmetric) or
    "pwlq" (one searched breakpoint inside the calibrated range, one-sided ranges handled);
    include / exclude: fnmatch globs on module names; layer_wbits / layer_abits: {glob: bits} overrides, first
    match wins; pow2_scale: round step sizes up to powers of two.
    """

    scheme: str = "pwlq"
    wbits: int = 4
    abits: int | None = 8
    breakpoint: str = "gaussian"
    num_breakpoints: int = 1
    region_bit: str = "extra"
    bias_correction: bool = True
    per_channel: bool = True
    weight_clip: str = "minmax"
    act_clip: str = "topk_median"
    act_scheme: str = "uniform"
    act_topk: int = 10
    act_percentile: float = 99.99
    pow2_scale: bool = False
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    layer_wbits: dict[str, int] = field(default_factory=dict)
    layer_abits: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on any invalid field (also checks every override)."""
        for name in ("include", "exclude"):
            globs = getattr(self, name)
            if not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) for g in globs):
                raise ValueError(f"{name} must be a list of glob strings, got {globs!r}")
        for name in ("layer_wbits", "layer_abits"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict {{glob: bits}}, got {getattr(self, name)!r}")
        self._weight_spec(self.wbits)
        if self.abits is not None:
            self._act_spec(self.abits)
        for bits in self.layer_wbits.values():
            self._weight_spec(bits)
        for bits in self.layer_abits.values():
            if bits is not None:
                self._act_spec(bits)

    def _weight_spec(self, bits: int) -> WeightSpec:
        return WeightSpec(
            scheme=self.scheme,
            bits=bits,
            per_channel=self.per_channel,
            breakpoint=self.breakpoint,
            num_breakpoints=self.num_breakpoints,
            bias_correction=self.bias_correction,
            pow2_scale=self.pow2_scale,
            clip=self.weight_clip,
            region_bit=self.region_bit,
        )

    def _act_spec(self, bits: int) -> ActSpec:
        return ActSpec(bits=bits, clip=self.act_clip, topk=self.act_topk, percentile=self.act_percentile,
                       scheme=self.act_scheme, region_bit=self.region_bit)

    def selects(self, name: str) -> bool:
        """Whether module ``name`` matches an include glob and no exclude glob."""
        match = fnmatch.fnmatchcase
        return any(match(name, g) for g in self.include) and not any(match(name, g) for g in self.exclude)

    def weight_spec(self, name: str) -> WeightSpec:
        """Weight recipe for module ``name`` (first matching ``layer_wbits`` glob overrides ``wbits``)."""
        bits = next((b for g, b in self.layer_wbits.items() if fnmatch.fnmatchcase(name, g)), self.wbits)
        return self._weight_spec(bits)

    def act_spec(self, name: str) -> ActSpec | None:
        """Input-activation recipe for module ``name``, or None when it stays float."""
        bits = next((b for g, b in self.layer_abits.items() if fnmatch.fnmatchcase(name, g)), self.abits)
        return None if bits is None else self._act_spec(bits)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = dataclasses.asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown QuantConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> QuantConfig:
        return cls.from_dict(json.loads(s))
