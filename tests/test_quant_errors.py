"""Bad input gives a ValueError with a clear message."""

import pytest
import torch
from torch import nn

from trimformer.quant import (
    ActSpec,
    BaseQuantConfig,
    PWLQConfig,
    UniformConfig,
    config_from_dict,
    fake_quant_pwlq,
    mse_clip_absmax,
    pack_bits,
    piece_layout,
    quantize_,
    quantize_weight,
    symmetric_scale,
)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (PWLQConfig, {"wbits": 1}, r"weight bits \(wbits\) must be in"),
        (UniformConfig, {"wbits": 17}, r"weight bits \(wbits\) must be in"),
        (PWLQConfig, {"wbits": 4.0}, "must be an int"),
        (UniformConfig, {"wbits": True}, "must be an int"),
        (PWLQConfig, {"act": ActSpec(bits=8), "layer_abits": {"x": 0}}, r"layer_abits\['x'\]: activation bits"),
        (PWLQConfig, {"layer_wbits": {"x": 32}}, r"weight bits of layer_wbits\['x'\] must be in"),
        (PWLQConfig, {"breakpoint": "cauchy"}, "unknown breakpoint"),
        (PWLQConfig, {"num_breakpoints": 4, "breakpoint": "search"}, "num_breakpoints must be 1, 2 or 3"),
        (PWLQConfig, {"num_breakpoints": 2}, "requires breakpoint='search'"),
        (PWLQConfig, {"num_breakpoints": 3, "breakpoint": "search", "wbits": 2, "region_bit": "inside"},
         "wbits: PWLQ with 3 breakpoint.* needs at least 3 bits"),
        (PWLQConfig, {"num_breakpoints": 3, "breakpoint": "search", "wbits": 4, "region_bit": "inside",
                      "layer_wbits": {"head": 2}}, r"layer_wbits\['head'\]: .*needs at least 3 bits"),
        (PWLQConfig, {"region_bit": "both"}, "region_bit"),
        (UniformConfig, {"weight_clip": "max"}, "unknown weight_clip"),
        (UniformConfig, {"include": "encoder.*"}, "include must be a list"),
        (PWLQConfig, {"exclude": [1]}, "exclude must be a list"),
        (UniformConfig, {"layer_wbits": [("a", 8)]}, "layer_wbits must be a dict"),
        (PWLQConfig, {"bias_correction": "yes"}, "bias_correction must be True or False"),
        (UniformConfig, {"per_channel": 1}, "per_channel must be True or False"),
        (PWLQConfig, {"act": {"bits": 8}}, "act must be an ActSpec or None"),
        (UniformConfig, {"act": None, "layer_abits": {"head": 8}}, "act is None"),
    ],
)
def test_bad_config(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 0}, r"activation bits \(ActSpec.bits\) must be in"),
        ({"clip": "max"}, "unknown ActSpec.clip"),
        ({"scheme": "int"}, "unknown ActSpec.scheme"),
        ({"topk": 0}, "ActSpec.topk"),
        ({"percentile": 120}, "ActSpec.percentile"),
        ({"percentile": "99"}, "ActSpec.percentile"),
        ({"scheme": "pwlq", "region_bit": "both"}, "unknown ActSpec.region_bit"),
    ],
)
def test_bad_act_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ActSpec(**kwargs)


def test_a_field_of_another_scheme_is_refused():
    with pytest.raises(TypeError, match="breakpoint"):
        UniformConfig(breakpoint="search")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown UniformConfig field.*breakpoint.*its fields are"):
        config_from_dict({"scheme": "uniform", "breakpoint": "search"})
    with pytest.raises(ValueError, match="unknown PWLQConfig field.*weight_clip"):
        PWLQConfig.from_dict({"weight_clip": "mse"})


def test_unknown_scheme_and_bad_dicts():
    with pytest.raises(ValueError, match="unknown quantization scheme 'int4'; expected one of 'pwlq', 'uniform'"):
        config_from_dict({"scheme": "int4", "wbits": 4})
    with pytest.raises(ValueError, match="no 'scheme'"):
        config_from_dict({"wbits": 4})
    with pytest.raises(ValueError, match="must be a dict"):
        config_from_dict('{"scheme": "pwlq"}')
    with pytest.raises(ValueError, match="unknown PWLQConfig field.*wbit"):
        config_from_dict({"scheme": "pwlq", "wbits": 4, "wbit": 3})
    with pytest.raises(ValueError, match="got scheme 'uniform'.*config_from_dict"):
        PWLQConfig.from_dict({"scheme": "uniform"})
    with pytest.raises(ValueError, match="unknown ActSpec field.*bit"):
        config_from_dict({"scheme": "pwlq", "act": {"bit": 8}})
    with pytest.raises(ValueError, match="weight bits"):
        config_from_dict({"scheme": "pwlq", "wbits": "4"})  # wrong type inside a dict: the same checks
    with pytest.raises(ValueError, match="mixes the old activation fields"):
        config_from_dict({"scheme": "pwlq", "abits": 8, "act": None})


def test_the_base_config_is_not_a_scheme():
    with pytest.raises(TypeError, match="use PWLQConfig or UniformConfig"):
        BaseQuantConfig()


def test_nan_weights():
    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    for cls in (PWLQConfig, UniformConfig):
        with pytest.raises(ValueError, match="NaN"):
            quantize_weight(w, cls())
    with pytest.raises(ValueError, match="NaN"):
        fake_quant_pwlq(w, 4)
    with pytest.raises(ValueError, match="NaN"):
        mse_clip_absmax(w, 4)
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        quantize_(nn.Sequential(lin), PWLQConfig())


def test_bad_function_arguments():
    with pytest.raises(ValueError, match="bits must be in"):
        symmetric_scale(torch.ones(2), 1)
    with pytest.raises(ValueError, match="unknown breakpoint"):
        fake_quant_pwlq(torch.randn(2, 8), 4, "median")
    with pytest.raises(ValueError, match="needs at least 3 bits"):
        piece_layout(2, 2)
    with pytest.raises(ValueError, match="codes must lie in"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="config must be one of PWLQConfig, .*got dict.*config_from_dict"):
        quantize_(nn.Linear(2, 2), {"wbits": 4})
    with pytest.raises(ValueError, match="config must be one of"):
        quantize_weight(torch.ones(2, 2), ActSpec())
    with pytest.raises(ValueError, match="integer|floating"):
        quantize_weight(torch.ones(2, 2, dtype=torch.int32), UniformConfig())
