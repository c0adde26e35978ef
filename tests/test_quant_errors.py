"""Bad input gives a ValueError with a clear message."""

import pytest
import torch
from torch import nn

from trimformer.quant import (
    QuantConfig,
    WeightSpec,
    fake_quant_pwlq,
    mse_clip_absmax,
    pack_bits,
    piece_layout,
    quantize_,
    quantize_weight,
    symmetric_scale,
)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"wbits": 1}, "weight bits must be in"),
        ({"wbits": 17}, "weight bits must be in"),
        ({"wbits": 4.0}, "must be an int"),
        ({"wbits": True}, "must be an int"),
        ({"abits": 0}, "activation bits must be in"),
        ({"layer_wbits": {"x": 32}}, "weight bits must be in"),
        ({"scheme": "int4"}, "unknown scheme 'int4'"),
        ({"breakpoint": "cauchy"}, "unknown breakpoint"),
        ({"act_clip": "max"}, "unknown act_clip"),
        ({"weight_clip": "mse"}, "scheme='uniform' only"),
        ({"num_breakpoints": 4, "breakpoint": "search"}, "num_breakpoints must be 1, 2 or 3"),
        ({"num_breakpoints": 2}, "requires breakpoint='search'"),
        ({"num_breakpoints": 3, "breakpoint": "search", "wbits": 2, "region_bit": "inside"}, "needs at least 3 bits"),
            ({"region_bit": "both"}, "region_bit"),
        ({"act_topk": 0}, "act_topk"),
        ({"act_percentile": 120}, "act_percentile"),
        ({"include": "encoder.*"}, "include must be a list"),
        ({"bias_correction": "yes"}, "bias_correction must be a bool"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_unknown_json_key():
    with pytest.raises(ValueError, match="unknown QuantConfig field"):
        QuantConfig.from_dict({"wbits": 4, "wbit": 3})


def test_nan_weights():
    w = torch.randn(4, 8)
    w[1, 2] = float("nan")
    for scheme in ("pwlq", "uniform"):
        with pytest.raises(ValueError, match="NaN"):
            quantize_weight(w, WeightSpec(scheme=scheme))
    with pytest.raises(ValueError, match="NaN"):
        fake_quant_pwlq(w, 4)
    with pytest.raises(ValueError, match="NaN"):
        mse_clip_absmax(w, 4)
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        quantize_(nn.Sequential(lin), QuantConfig())


def test_bad_function_arguments():
    with pytest.raises(ValueError, match="bits must be in"):
        symmetric_scale(torch.ones(2), 1)
    with pytest.raises(ValueError, match="unknown breakpoint"):
        fake_quant_pwlq(torch.randn(2, 8), 4, "median")
    with pytest.raises(ValueError, match="needs at least 3 bits"):
        piece_layout(2, 2)
    with pytest.raises(ValueError, match="codes must lie in"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="QuantConfig"):
        quantize_(nn.Linear(2, 2), {"wbits": 4})
    with pytest.raises(ValueError, match="integer|floating"):
        quantize_weight(torch.ones(2, 2, dtype=torch.int32), WeightSpec())
