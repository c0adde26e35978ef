"""QuantConfig: JSON round trip, validation, and one test per knob proving that it changes behaviour."""

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from trimformer.quant import QuantConfig, calibrate, quantize_


def test_json_round_trip_default_and_custom():
    for cfg in (
        QuantConfig(),
        QuantConfig(
            scheme="uniform",
            wbits=6,
            abits=None,
            weight_clip="mse",
            act_clip="percentile",
            act_percentile=99.9,
            include=("encoder.*",),
            exclude=["*.pooler*"],
            layer_wbits={"*.0.*": 8},
            layer_abits={"*.output.*": None, "*": 6},
            pow2_scale=True,
        ),
    ):
        text = json.dumps(cfg.to_dict())
        assert QuantConfig.from_dict(json.loads(text)) == cfg
        assert QuantConfig.from_json(cfg.to_json()) == cfg


def test_overrides_and_globs():
    cfg = QuantConfig(layer_wbits={"a.*": 8, "*": 6}, layer_abits={"b": None}, exclude=["c*"])
    assert cfg.weight_spec("a.x").bits == 8 and cfg.weight_spec("b").bits == 6
    assert cfg.act_spec("b") is None and cfg.act_spec("a.x").bits == 8
    assert cfg.selects("a.x") and not cfg.selects("c.1")


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    with torch.no_grad():
        for p in m.parameters():  # heavy-ish tails so that clipping / breakpoint choices matter
            p.copy_(torch.distributions.Laplace(0.0, 0.1).sample(p.shape))
    return m.eval()


_BATCHES = [torch.randn(16, 16, generator=torch.Generator().manual_seed(s)) for s in range(4)]
_X = torch.randn(32, 16, generator=torch.Generator().manual_seed(99))


def _run(cfg: QuantConfig, filter_fn=None) -> torch.Tensor:
    m = quantize_(_model(), cfg, filter_fn)
    if any(getattr(mod, "input_quant", None) is not None for mod in m.modules()):
        calibrate(m, _BATCHES)
    with torch.no_grad():
        return m(_X)


# knob -> (base config kwargs, changed kwargs)
KNOBS = {
    "scheme": ({}, {"scheme": "uniform"}),
    "wbits": ({}, {"wbits": 6}),
    "abits": ({}, {"abits": 4}),
    "breakpoint": ({}, {"breakpoint": "search"}),
    "num_breakpoints": ({"breakpoint": "search", "wbits": 5}, {"num_breakpoints": 3}),
    "region_bit": ({}, {"region_bit": "inside"}),
    "bias_correction": ({}, {"bias_correction": False}),
    "per_channel": ({}, {"per_channel": False}),
    "weight_clip": ({"scheme": "uniform"}, {"weight_clip": "mse"}),
    "act_clip": ({}, {"act_clip": "minmax"}),
    "act_scheme": ({"abits": 4}, {"act_scheme": "pwlq"}),
    "act_topk": ({}, {"act_topk": 100}),
    "act_percentile": ({"act_clip": "percentile"}, {"act_percentile": 99.0}),
    "pow2_scale": ({}, {"pow2_scale": True}),
    "include": ({}, {"include": ["0", "4"]}),
    "exclude": ({}, {"exclude": ["2"]}),
    "layer_wbits": ({}, {"layer_wbits": {"2": 8}}),
    "layer_abits": ({}, {"layer_abits": {"0": None}}),
}


def test_every_field_has_a_knob_test():
    assert set(KNOBS) == {f.name for f in dataclasses.fields(QuantConfig)}


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_knob_changes_output(knob):
    base, change = KNOBS[knob]
    out_base = _run(QuantConfig(**base))
    out_changed = _run(QuantConfig(**{**base, **change}))
    assert not torch.equal(out_base, out_changed), f"{knob} had no effect"


@pytest.mark.parametrize("clip", ["percentile", "mse"])
def test_each_act_clip_rule_changes_output(clip):
    assert not torch.equal(_run(QuantConfig(abits=4)), _run(QuantConfig(abits=4, act_clip=clip)))


def test_filter_fn_changes_output_and_selection():
    out = _run(QuantConfig(), filter_fn=lambda mod, name: mod.out_features != 8)
    assert not torch.equal(out, _run(QuantConfig()))
    m = quantize_(_model(), QuantConfig(abits=None), filter_fn=lambda mod, name: name == "0")
    assert [type(x).__name__ for x in m][::2] == ["QuantLinear", "Linear", "Linear"]


def test_config_recorded_on_model():
    cfg = QuantConfig(wbits=5)
    m = quantize_(copy.deepcopy(_model()), cfg)
    assert QuantConfig.from_dict(m.trimformer_quant_config) == cfg
