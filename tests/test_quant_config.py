"""Quantization configs: JSON round trips, one test per knob of every config type proving that it changes
behaviour, and loading the dicts of the former single ``QuantConfig``."""

import copy
import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from trimformer.quant import (
    HANDLERS,
    ActSpec,
    AdaRoundConfig,
    BaseQuantConfig,
    BRECQConfig,
    Encoded,
    PWLQAdaRoundConfig,
    PWLQConfig,
    RAPQConfig,
    UniformConfig,
    WeightHandler,
    calibrate,
    config_from_dict,
    load_packed,
    load_quantized_,
    pack_model,
    quantize_,
    save_packed,
)

CONFIG_TYPES = (PWLQConfig, UniformConfig)
RECON_CONFIGS = (AdaRoundConfig, BRECQConfig, PWLQAdaRoundConfig, RAPQConfig)


def test_every_config_type_has_a_handler_and_a_distinct_scheme():
    assert set(HANDLERS) == set(CONFIG_TYPES) | set(RECON_CONFIGS)  # the latter: tests/test_quant_reconstruct.py
    assert len({t.scheme for t in HANDLERS}) == len(HANDLERS)
    assert len({h.format_id for h in HANDLERS.values()}) == len(HANDLERS)


@pytest.mark.parametrize("cfg", [
    PWLQConfig(),
    PWLQConfig(wbits=5, act=ActSpec(bits=4, scheme="pwlq", region_bit="inside", topk=20), breakpoint="search",
               num_breakpoints=3, region_bit="inside", per_channel=False, bias_correction=False,
               include=("encoder.*",), exclude=["*.pooler*"], layer_wbits={"*.0.*": 8},
               layer_abits={"*.output.*": None, "*": 6}),
    UniformConfig(),
    UniformConfig(wbits=6, act=None, weight_clip="mse", pow2_scale=True, layer_wbits={"classifier": 8}),
    UniformConfig(act=ActSpec(clip="percentile", percentile=99.9), exclude=("classifier",)),
])
def test_json_round_trip(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["scheme"] == cfg.scheme
    assert type(cfg).from_dict(d) == cfg
    back = config_from_dict(d)
    assert type(back) is type(cfg) and back == cfg
    assert type(cfg).from_json(cfg.to_json()) == cfg
    if cfg.act is not None:
        assert ActSpec.from_dict(cfg.act.to_dict()) == cfg.act


def test_configs_are_frozen_and_lists_become_tuples():
    cfg = PWLQConfig(include=["a.*"], exclude=["b"])
    assert cfg.include == ("a.*",) and cfg.exclude == ("b",)
    with pytest.raises(AttributeError):
        cfg.wbits = 8  # type: ignore[misc]


def test_overrides_and_globs():
    cfg = PWLQConfig(layer_wbits={"a.*": 8, "*": 6}, layer_abits={"b": None}, exclude=["c*"])
    assert cfg.weight_config("a.x").wbits == 8 and cfg.weight_config("b").wbits == 6
    assert type(cfg.weight_config("a.x")) is PWLQConfig and cfg.weight_config("a.x").breakpoint == cfg.breakpoint
    assert cfg.act_spec("b") is None and cfg.act_spec("a.x") == ActSpec(bits=8)
    assert cfg.selects("a.x") and not cfg.selects("c.1")
    assert PWLQConfig(act=None).act_spec("a.x") is None
    assert PWLQConfig(layer_abits={"a": 4}).act_spec("a").bits == 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    with torch.no_grad():
        for p in m.parameters():  # heavy-ish tails so that clipping / breakpoint choices matter
            p.copy_(torch.distributions.Laplace(0.0, 0.1).sample(p.shape))
    return m.eval()


_BATCHES = [torch.randn(16, 16, generator=torch.Generator().manual_seed(s)) for s in range(4)]
_X = torch.randn(32, 16, generator=torch.Generator().manual_seed(99))


def _run(cfg: BaseQuantConfig, filter_fn=None) -> torch.Tensor:
    m = quantize_(_model(), cfg, filter_fn)
    if any(getattr(mod, "input_quant", None) is not None for mod in m.modules()):
        calibrate(m, _BATCHES)
    with torch.no_grad():
        return m(_X)


# knob -> (base kwargs, changed kwargs); the shared ones must matter under every scheme
SHARED_KNOBS = {
    "wbits": ({}, {"wbits": 6}),
    "act": ({}, {"act": ActSpec(bits=4)}),
    "per_channel": ({}, {"per_channel": False}),
    "bias_correction": ({}, {"bias_correction": False}),
    "pow2_scale": ({}, {"pow2_scale": True}),
    "include": ({}, {"include": ["0", "4"]}),
    "exclude": ({}, {"exclude": ["2"]}),
    "layer_wbits": ({}, {"layer_wbits": {"2": 8}}),
    "layer_abits": ({}, {"layer_abits": {"0": None}}),
}
KNOBS = {
    PWLQConfig: {
        **SHARED_KNOBS,
        "breakpoint": ({}, {"breakpoint": "search"}),
        "num_breakpoints": ({"breakpoint": "search", "wbits": 5}, {"num_breakpoints": 3}),
        "region_bit": ({}, {"region_bit": "inside"}),
    },
    UniformConfig: {**SHARED_KNOBS, "weight_clip": ({}, {"weight_clip": "mse"})},
}
ACT_KNOBS = {
    "bits": ({}, {"bits": 4}),
    "clip": ({}, {"clip": "minmax"}),
    "topk": ({}, {"topk": 100}),
    "percentile": ({"clip": "percentile"}, {"percentile": 99.0}),
    "scheme": ({"bits": 4}, {"scheme": "pwlq"}),
    "region_bit": ({"bits": 4, "scheme": "pwlq"}, {"region_bit": "inside"}),
    "pow2": ({"bits": 4}, {"pow2": True}),
}


@pytest.mark.parametrize("cls", CONFIG_TYPES, ids=lambda t: t.__name__)
def test_every_field_has_a_knob_test(cls):
    assert set(KNOBS[cls]) == cls.field_names()


def test_every_act_field_has_a_knob_test():
    assert set(ACT_KNOBS) == {f for f in ActSpec.__dataclass_fields__}


@pytest.mark.parametrize("cls, knob", [(c, k) for c in CONFIG_TYPES for k in sorted(KNOBS[c])],
                         ids=lambda x: getattr(x, "__name__", x))
def test_knob_changes_output(cls, knob):
    base, change = KNOBS[cls][knob]
    out_base = _run(cls(**base))
    out_changed = _run(cls(**{**base, **change}))
    assert not torch.equal(out_base, out_changed), f"{cls.__name__}.{knob} had no effect"


@pytest.mark.parametrize("cls, knob", [(c, k) for c in CONFIG_TYPES for k in sorted(ACT_KNOBS)],
                         ids=lambda x: getattr(x, "__name__", x))
def test_act_knob_changes_output(cls, knob):
    base, change = ACT_KNOBS[knob]
    out_base = _run(cls(act=ActSpec(**base)))
    out_changed = _run(cls(act=ActSpec(**{**base, **change})))
    assert not torch.equal(out_base, out_changed), f"ActSpec.{knob} had no effect under {cls.__name__}"


def test_scheme_changes_output():
    assert not torch.equal(_run(PWLQConfig()), _run(UniformConfig()))


@pytest.mark.parametrize("clip", ["percentile", "mse"])
def test_each_act_clip_rule_changes_output(clip):
    assert not torch.equal(_run(PWLQConfig(act=ActSpec(bits=4))), _run(PWLQConfig(act=ActSpec(bits=4, clip=clip))))


def test_filter_fn_changes_output_and_selection():
    out = _run(PWLQConfig(), filter_fn=lambda mod, name: mod.out_features != 8)
    assert not torch.equal(out, _run(PWLQConfig()))
    m = quantize_(_model(), PWLQConfig(act=None), filter_fn=lambda mod, name: name == "0")
    assert [type(x).__name__ for x in m][::2] == ["QuantLinear", "Linear", "Linear"]


@pytest.mark.parametrize("cfg", [PWLQConfig(wbits=5), UniformConfig(wbits=3, act=None)])
def test_config_recorded_on_model(cfg):
    m = quantize_(copy.deepcopy(_model()), cfg)
    assert config_from_dict(m.trimformer_quant_config) == cfg
    assert {type(mod.wconfig) for mod in m.modules() if hasattr(mod, "wconfig")} == {type(cfg)}


# --- dicts written by the former single QuantConfig (captured from its to_dict() before the split) -----------

LEGACY_DEFAULT = {  # QuantConfig().to_dict()
    "abits": 8, "act_clip": "topk_median", "act_percentile": 99.99, "act_scheme": "uniform", "act_topk": 10,
    "bias_correction": True, "breakpoint": "gaussian", "exclude": [], "include": ["*"], "layer_abits": {},
    "layer_wbits": {}, "num_breakpoints": 1, "per_channel": True, "pow2_scale": False, "region_bit": "extra",
    "scheme": "pwlq", "wbits": 4, "weight_clip": "minmax",
}
LEGACY_UNIFORM = {  # QuantConfig(scheme="uniform", wbits=6, abits=None, weight_clip="mse", act_clip="percentile",
    # act_percentile=99.9, exclude=["classifier"], layer_wbits={"*.0.*": 8},
    # layer_abits={"*.output.*": None, "pooler*": 6}, pow2_scale=True).to_dict()
    "abits": None, "act_clip": "percentile", "act_percentile": 99.9, "act_scheme": "uniform", "act_topk": 10,
    "bias_correction": True, "breakpoint": "gaussian", "exclude": ["classifier"], "include": ["*"],
    "layer_abits": {"*.output.*": None, "pooler*": 6}, "layer_wbits": {"*.0.*": 8}, "num_breakpoints": 1,
    "per_channel": True, "pow2_scale": True, "region_bit": "extra", "scheme": "uniform", "wbits": 6,
    "weight_clip": "mse",
}
LEGACY_PWLQ = {  # QuantConfig(scheme="pwlq", wbits=4, abits=4, breakpoint="search", num_breakpoints=2,
    # region_bit="inside", act_scheme="pwlq", act_topk=20, per_channel=False, bias_correction=False,
    # layer_abits={"*.dense": 6}).to_dict()
    "abits": 4, "act_clip": "topk_median", "act_percentile": 99.99, "act_scheme": "pwlq", "act_topk": 20,
    "bias_correction": False, "breakpoint": "search", "exclude": [], "include": ["*"],
    "layer_abits": {"*.dense": 6}, "layer_wbits": {}, "num_breakpoints": 2, "per_channel": False,
    "pow2_scale": False, "region_bit": "inside", "scheme": "pwlq", "wbits": 4, "weight_clip": "minmax",
}


def test_legacy_dicts_load_into_the_new_types():
    assert config_from_dict(LEGACY_DEFAULT) == PWLQConfig()
    assert config_from_dict(LEGACY_UNIFORM) == UniformConfig(
        wbits=6, act=ActSpec(bits=6, clip="percentile", percentile=99.9), weight_clip="mse", pow2_scale=True,
        exclude=["classifier"], layer_wbits={"*.0.*": 8}, layer_abits={"*.output.*": None, "pooler*": 6, "*": None})
    assert config_from_dict(LEGACY_PWLQ) == PWLQConfig(
        wbits=4, act=ActSpec(bits=4, scheme="pwlq", topk=20, region_bit="inside"), breakpoint="search",
        num_breakpoints=2, region_bit="inside", per_channel=False, bias_correction=False,
        layer_abits={"*.dense": 6})
    assert PWLQConfig.from_dict(LEGACY_DEFAULT) == PWLQConfig()


def test_legacy_uniform_dict_resolves_layers_as_before():
    cfg = config_from_dict(LEGACY_UNIFORM)
    assert cfg.act_spec("pooler.dense").bits == 6  # the one layer the old abits=None config gave bits
    assert cfg.act_spec("encoder.output.dense") is None and cfg.act_spec("encoder.attention") is None
    assert cfg.weight_config("layer.0.x").wbits == 8 and not cfg.selects("classifier")


def test_legacy_weights_only_dict():
    assert config_from_dict({**LEGACY_DEFAULT, "abits": None}) == PWLQConfig(act=None)


LEGACY_FILES = Path(__file__).parent / "data" / "quant_legacy"


def _legacy_model() -> nn.Module:  # the float skeleton the fixtures were made from
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("name, cls", [("pwlq_w4a8", PWLQConfig), ("uniform_w6_pwlq_act", UniformConfig)])
def test_legacy_packed_files_load_bit_identically(name, cls):
    """Files written by ``save_packed`` with the former QuantConfig (a PWLQ W4A8 model with a 6-bit layer; a
    uniform W6 model with abits=None, PWLQ activations at 4/5 bits on two layers and region_bit="inside")."""
    path = LEGACY_FILES / f"{name}.safetensors"
    _, meta = load_packed(path)
    cfg = config_from_dict(json.loads(meta["quant_config"]))
    assert type(cfg) is cls
    model = load_quantized_(_legacy_model(), cfg, load_file(str(path)))
    expected = load_file(str(LEGACY_FILES / f"{name}.expected.safetensors"))
    with torch.no_grad():
        assert torch.equal(model(expected["input"]), expected["output"])
    stored, repacked = load_file(str(path)), pack_model(model)  # and packing writes the same format as before
    assert stored.keys() == repacked.keys() and all(torch.equal(stored[k], repacked[k]) for k in stored)


# --- a new scheme is one config, one handler and one registry line --------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class _AsymConfig(BaseQuantConfig):
    """Toy scheme: asymmetric uniform weights (per-row min / step)."""

    scheme: ClassVar[str] = "toy_asym"
    round_half_up: bool = False


class _AsymHandler(WeightHandler):
    format_id = 99

    def encode(self, w2d, config):
        lo, hi = w2d.amin(1), w2d.amax(1)
        step = ((hi - lo) / (2**config.wbits - 1)).clamp_min(1e-30)
        x = (w2d - lo[:, None]) / step[:, None]
        codes = torch.floor(x + 0.5) if config.round_half_up else torch.round(x)
        return Encoded(codes.clamp(0, 2**config.wbits - 1).to(torch.int32), config.wbits, {"lo": lo, "step": step})

    def decode(self, codes, params, bits, region_bits):
        return codes.float() * params["step"][:, None] + params["lo"][:, None]


def test_a_registered_scheme_runs_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setitem(HANDLERS, _AsymConfig, _AsymHandler())
    cfg = _AsymConfig(wbits=3, act=None, layer_wbits={"2": 5})
    assert config_from_dict(json.loads(cfg.to_json())) == cfg
    m = quantize_(_model(), cfg)
    assert m[2].qweight.scheme == "toy_asym" and m[2].qweight.bits == 5
    with torch.no_grad():
        assert float((m[0].weight - _model()[0].weight).abs().max()) > 0
    save_packed(m, tmp_path / "m.safetensors")
    sd, meta = load_packed(tmp_path / "m.safetensors")
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
    again = load_quantized_(_model(), config_from_dict(json.loads(meta["quant_config"])),
                            load_file(str(tmp_path / "m.safetensors")))
    with torch.no_grad():
        assert torch.equal(again(_X), m(_X))
