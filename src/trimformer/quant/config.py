"""Quantization recipes: one frozen dataclass per weight scheme, each validating its own fields.

- :class:`PWLQConfig`: piecewise linear weights (breakpoint rule, number of breakpoints, region-bit accounting).
- :class:`UniformConfig`: symmetric uniform weights (clipping rule).

Both extend :class:`BaseQuantConfig`, which holds what every scheme shares: weight bits, granularity, bias
correction, power-of-two steps, the layer globs, per-layer bit overrides, and the input-activation recipe
:class:`ActSpec` (``act=None``: weights only). A config is applied to one layer as ``config.weight_config(name)``
(its ``wbits`` resolved for that layer) and ``config.act_spec(name)``.

Configs round-trip through JSON: ``to_dict`` writes ``{"scheme": ..., **fields}`` and
:func:`trimformer.quant.config_from_dict` picks the type from ``"scheme"``. Dicts written by the single
``QuantConfig`` this module used to have (flat ``abits`` / ``act_*`` fields) are read too, see :func:`upgrade_legacy`.
Which code quantizes a weight for each config type lives in :mod:`trimformer.quant.handlers`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ._checks import check_bits, check_choice
from .pwlq import BREAKPOINTS, REGION_BIT_MODES, code_bits

WEIGHT_CLIPS = ("minmax", "mse")
ACT_CLIPS = ("topk_median", "percentile", "mse", "minmax")
ACT_SCHEMES = ("uniform", "pwlq")

C = TypeVar("C", bound="BaseQuantConfig")


def _check_bool(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be True or False, got {value!r}")


def _check_globs(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(g, str) for g in value):
        raise ValueError(f"{what} must be a list of glob strings (e.g. [{value!r}] for one), got {value!r}")
    return tuple(value)


def _check_overrides(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(g, str) for g in value):
        raise ValueError(f"{what} must be a dict {{glob: bits}} (first matching glob wins), got {value!r}")
    return dict(value)


def _first_match(name: str, overrides: Mapping[str, Any], default: Any) -> Any:
    return next((v for g, v in overrides.items() if fnmatch.fnmatchcase(name, g)), default)


def _unknown_keys(cls: type, d: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                         f"its fields are {', '.join(sorted(known))}")


@dataclass(frozen=True)
class ActSpec:
    """How the input activation of a layer is quantized, per tensor, after calibration.

    bits: activation bits; clip: range rule, "topk_median" (paper: median of the top-``topk`` values per batch,
    averaged), "percentile" (``percentile``-th), "mse" or "minmax"; scheme: "uniform" (asymmetric) or "pwlq"
    (one searched breakpoint inside the calibrated range, see :mod:`trimformer.quant.act_pwlq`); region_bit:
    PWLQ activations only, "extra" or "inside" as for :class:`PWLQConfig`; pow2: uniform activations only,
    snap the calibrated step to the nearest power of two (range ends become integer multiples of it, so the
    zero point stays an exact integer).
    """

    bits: int = 8
    clip: str = "topk_median"
    topk: int = 10
    percentile: float = 99.99
    scheme: str = "uniform"
    region_bit: str = "extra"
    pow2: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits, "activation bits (ActSpec.bits)")
        _check_bool(self.pow2, "ActSpec.pow2")
        if self.pow2 and self.scheme != "uniform":
            raise ValueError("ActSpec.pow2 applies to uniform activations; use scheme='uniform' or pow2=False")
        check_choice(self.clip, ACT_CLIPS, "ActSpec.clip")
        check_choice(self.scheme, ACT_SCHEMES, "ActSpec.scheme")
        check_choice(self.region_bit, REGION_BIT_MODES, "ActSpec.region_bit")
        if self.scheme == "pwlq":
            code_bits(self.bits, 1, self.region_bit)  # raises when too few bits are left for the index
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise ValueError(f"ActSpec.topk must be a positive int, got {self.topk!r}")
        if (isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float))
                or not 50.0 < float(self.percentile) <= 100.0):
            raise ValueError(f"ActSpec.percentile must be a number in (50, 100], got {self.percentile!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActSpec:
        if not isinstance(d, Mapping):
            raise ValueError(f"act must be a dict of ActSpec fields or null, got {d!r}")
        _unknown_keys(cls, d, {f.name for f in dataclasses.fields(cls)})
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class BaseQuantConfig:
    """What every weight scheme shares. Use a subclass (:class:`PWLQConfig`, :class:`UniformConfig`).

    wbits: weight bits; act: input-activation recipe, or None to quantize weights only; per_channel: one
    weight range per output channel (else per tensor); bias_correction: data-free per-channel mean/std fix of
    the quantized weights; pow2_scale: round step sizes up to powers of two; include / exclude: fnmatch globs on
    module names; layer_wbits / layer_abits: ``{glob: bits}`` overrides of ``wbits`` / ``act.bits``, first
    matching glob wins (a ``None`` in layer_abits leaves that layer's input in float).
    """

    scheme: ClassVar[str]  # the "scheme" of to_dict(); each subclass names its own

    wbits: int = 4
    act: ActSpec | None = field(default_factory=ActSpec)
    per_channel: bool = True
    bias_correction: bool = True
    pow2_scale: bool = False
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    layer_wbits: dict[str, int] = field(default_factory=dict)
    layer_abits: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(getattr(type(self), "scheme", None), str):
            raise TypeError(f"{type(self).__name__} names no scheme; use PWLQConfig or UniformConfig")
        check_bits(self.wbits, "weight bits (wbits)")
        for name in ("per_channel", "bias_correction", "pow2_scale"):
            _check_bool(getattr(self, name), name)
        if self.act is not None and not isinstance(self.act, ActSpec):
            raise ValueError(f"act must be an ActSpec or None (weights only), got {self.act!r}; "
                             "for a dict use ActSpec(**d) or config_from_dict")
        object.__setattr__(self, "include", _check_globs(self.include, "include"))
        object.__setattr__(self, "exclude", _check_globs(self.exclude, "exclude"))
        object.__setattr__(self, "layer_wbits", _check_overrides(self.layer_wbits, "layer_wbits"))
        object.__setattr__(self, "layer_abits", _check_overrides(self.layer_abits, "layer_abits"))
        for glob, bits in self.layer_wbits.items():
            check_bits(bits, f"weight bits of layer_wbits[{glob!r}]")
        for glob, bits in self.layer_abits.items():
            if bits is None:
                continue
            if self.act is None:
                raise ValueError(f"layer_abits[{glob!r}] = {bits} but act is None (weights only); set act=ActSpec(...)"
                                 " and leave the other layers in float with {'*': None} after your globs")
            self._act_with_bits(bits, f"layer_abits[{glob!r}]")

    def _act_with_bits(self, bits: int, what: str) -> ActSpec:
        assert self.act is not None
        try:
            return dataclasses.replace(self.act, bits=bits)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None

    def weight_bits(self) -> dict[str, int]:
        """Every weight bit width this config can use, by where it was given (``wbits``, ``layer_wbits[g]``)."""
        return {"wbits": self.wbits, **{f"layer_wbits[{g!r}]": b for g, b in self.layer_wbits.items()}}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def selects(self, name: str) -> bool:
        """Whether module ``name`` matches an include glob and no exclude glob."""
        match = fnmatch.fnmatchcase
        return any(match(name, g) for g in self.include) and not any(match(name, g) for g in self.exclude)

    def weight_config(self: C, name: str) -> C:
        """This config with ``wbits`` resolved for module ``name`` (first matching ``layer_wbits`` glob)."""
        bits = _first_match(name, self.layer_wbits, self.wbits)
        return self if bits == self.wbits else dataclasses.replace(self, wbits=bits)

    def act_spec(self, name: str) -> ActSpec | None:
        """Input-activation recipe of module ``name``, or None when its input stays float."""
        if self.act is None:
            return None
        bits = _first_match(name, self.layer_abits, self.act.bits)
        return None if bits is None else self._act_with_bits(bits, f"layer_abits for {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, ``{"scheme": ..., **fields}``."""
        d: dict[str, Any] = {"scheme": self.scheme}
        for f in dataclasses.fields(self):
            d[f.name] = getattr(self, f.name)
        d["act"] = None if self.act is None else self.act.to_dict()
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["layer_wbits"], d["layer_abits"] = dict(self.layer_wbits), dict(self.layer_abits)
        return d

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict` (also reads the old flat ``QuantConfig`` dicts); unknown keys raise."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a quantization config must be a dict, got {type(d).__name__}")
        d = dict(d)
        scheme = d.pop("scheme", cls.scheme)
        if scheme != cls.scheme:
            raise ValueError(f"{cls.__name__}.from_dict got scheme {scheme!r}, not {cls.scheme!r}; "
                             "config_from_dict(d) returns the type the dict names")
        if LEGACY_ONLY_FIELDS & d.keys():
            d = upgrade_legacy(cls, d)
        _unknown_keys(cls, d, cls.field_names())
        if d.get("act") is not None:
            d["act"] = ActSpec.from_dict(d["act"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[C], s: str) -> C:
        return cls.from_dict(json.loads(s))


@dataclass(frozen=True, kw_only=True)
class PWLQConfig(BaseQuantConfig):
    """Piecewise linear quantization of the weights (Fang et al., ECCV 2020), see :mod:`trimformer.quant.pwlq`.

    breakpoint: "gaussian" or "laplace" (closed forms) or "search" (MSE); num_breakpoints: 1 (paper) or 2-3
    (search only); region_bit: "extra" (paper: b-bit pieces plus the region bit(s), b+1 bits stored) or
    "inside" (b bits in total).
    """

    scheme: ClassVar[str] = "pwlq"

    breakpoint: str = "gaussian"
    num_breakpoints: int = 1
    region_bit: str = "extra"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.breakpoint, BREAKPOINTS, "breakpoint")
        check_choice(self.region_bit, REGION_BIT_MODES, "region_bit")
        if isinstance(self.num_breakpoints, bool) or self.num_breakpoints not in (1, 2, 3):
            raise ValueError(f"num_breakpoints must be 1, 2 or 3, got {self.num_breakpoints!r}")
        if self.num_breakpoints > 1 and self.breakpoint != "search":
            raise ValueError(f"num_breakpoints={self.num_breakpoints} requires breakpoint='search' "
                             "(the closed forms place one breakpoint)")
        for what, bits in self.weight_bits().items():
            try:
                code_bits(bits, self.num_breakpoints, self.region_bit)
            except ValueError as err:
                raise ValueError(f"{what}: {err}; raise the bits or use region_bit='extra'") from None


@dataclass(frozen=True, kw_only=True)
class UniformConfig(BaseQuantConfig):
    """Symmetric uniform weights, see :mod:`trimformer.quant.uniform`.

    weight_clip: "minmax" (clip at max|w|) or "mse" (the clipping range minimising the squared error).
    """

    scheme: ClassVar[str] = "uniform"

    weight_clip: str = "minmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.weight_clip, WEIGHT_CLIPS, "weight_clip")


# --- dicts written by the former single QuantConfig -------------------------------------------------------------

LEGACY_FIELDS = frozenset({
    "scheme", "wbits", "abits", "breakpoint", "num_breakpoints", "region_bit", "bias_correction", "per_channel",
    "weight_clip", "act_clip", "act_scheme", "act_topk", "act_percentile", "pow2_scale", "include", "exclude",
    "layer_wbits", "layer_abits",
})
LEGACY_ONLY_FIELDS = frozenset({"abits", "act_clip", "act_scheme", "act_topk", "act_percentile"})
_LEGACY_ACT = {"act_clip": "clip", "act_topk": "topk", "act_percentile": "percentile", "act_scheme": "scheme"}


def upgrade_legacy(cls: type[BaseQuantConfig], d: Mapping[str, Any]) -> dict[str, Any]:
    """Fields of ``cls`` from a dict of the former flat ``QuantConfig`` (``abits``, ``act_*``), same behaviour.

    ``abits`` and ``act_*`` become ``act`` (with the one ``region_bit`` the old config shared between PWLQ
    weights and PWLQ activations); when ``abits`` was None but ``layer_abits`` gave some layers bits, ``act``
    takes the first of them and ``"*": None`` keeps every other layer float, as before. Old fields that did
    not apply to this scheme (e.g. ``breakpoint`` of a uniform config, ``weight_clip`` of a PWLQ one) are
    dropped; keys that were never fields are kept so that they raise.
    """
    if "act" in d:
        raise ValueError("config dict mixes the old activation fields (abits, act_*) with the new 'act'; use one")
    d = dict(d)
    abits = d.pop("abits", 8)
    act = {new: d.pop(old) for old, new in _LEGACY_ACT.items() if old in d}
    act["region_bit"] = d.get("region_bit", "extra")
    layer_abits = d.get("layer_abits")
    if abits is None and isinstance(layer_abits, Mapping):
        enabled = [b for b in layer_abits.values() if b is not None]
        if enabled:
            abits = enabled[0]
            d["layer_abits"] = {**layer_abits, "*": layer_abits.get("*")}
    d["act"] = None if abits is None else {"bits": abits, **act}
    own = cls.field_names()
    return {k: v for k, v in d.items() if k in own or k not in LEGACY_FIELDS}
