"""quantize_ / calibrate on tiny models: layer swapping, calibration lifecycle, a tiny random BERT at W8A8."""

import copy

import pytest
import torch
from torch import nn

from trimformer.quant import (
    ActQuantizer,
    ActSpec,
    PWLQConfig,
    QuantConv2d,
    QuantLinear,
    UniformConfig,
    calibrate,
    calibration,
    quantize_,
    select_layers,
)
from trimformer.testing import tiny_bert


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False),  # grouped
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def test_quantize_swaps_layers_and_keeps_state_keys():
    fp = _cnn()
    q = quantize_(copy.deepcopy(fp), PWLQConfig(act=None, wbits=8))
    kinds = [type(m).__name__ for m in q]
    assert kinds.count("QuantConv2d") == 3 and kinds.count("QuantLinear") == 1
    assert q[2].groups == 8 and q[4].groups == 2 and q[4].bias is None
    assert set(fp.state_dict()) == set(q.state_dict())
    assert not q[0].weight.requires_grad
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert _rel(q(x), fp(x)) < 0.05


def test_uncalibrated_activation_quantizer_raises_then_calibrates():
    q = quantize_(_cnn(), PWLQConfig(wbits=8, act=ActSpec(bits=8)))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="not calibrated"):
        q(x)
    q.train()
    unseen = calibrate(q, [torch.randn(2, 3, 8, 8) for _ in range(3)])
    assert unseen == [] and q.training  # mode restored
    quants = [m for m in q.modules() if isinstance(m, ActQuantizer)]
    assert len(quants) == 4 and all(bool(m.calibrated) for m in quants)
    assert float(quants[1].lo) == 0.0 and float(quants[1].hi) > 0  # after ReLU: non-negative range
    q.eval()
    with torch.no_grad():
        assert _rel(q(x), _cnn()(x)) < 0.1


def test_calibration_topk_median_rule():
    lin = nn.Sequential(nn.Linear(4, 4))
    quantize_(lin, UniformConfig(wbits=8, act=ActSpec(bits=8, topk=10)))
    b1 = torch.arange(100.0).reshape(25, 4) / 10  # top-10 of 0..9.9: 9.0..9.9, median 9.45
    b2 = -b1  # top-10 of -9.9..0: -0.9..0, median -0.45; bottom-10 median -9.45
    with calibration(lin):
        lin(b1)
        lin(b2)
    aq = lin[0].input_quant
    assert torch.isclose(aq.hi, torch.tensor((9.45 - 0.45) / 2))
    assert torch.isclose(aq.lo, torch.tensor((0.45 - 9.45) / 2))


def test_shared_module_replaced_everywhere_and_unseen_reported():
    shared = nn.Linear(4, 4)
    m = nn.ModuleDict({"a": shared, "b": shared, "c": nn.Linear(4, 4)})
    assert select_layers(m, PWLQConfig()) == ["a", "c"]
    quantize_(m, PWLQConfig(wbits=8))
    assert isinstance(m["a"], QuantLinear) and m["a"] is m["b"]
    assert calibrate(m, [torch.randn(3, 4)], forward=lambda mod, x: mod["a"](x)) == ["c.input_quant"]


def test_multihead_attention_out_proj_is_skipped():
    m = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    names = select_layers(m, UniformConfig())
    assert "self_attn.out_proj" not in names and "linear1" in names


def test_tiny_bert_w8a8_close_to_fp():
    fp = tiny_bert(base=True, vocab_size=120, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32)
    gen = torch.Generator().manual_seed(1)
    batches = [
        {"input_ids": torch.randint(0, 120, (4, 16), generator=gen), "attention_mask": torch.ones(4, 16)}
        for _ in range(4)
    ]
    test = {"input_ids": torch.randint(0, 120, (4, 16), generator=gen), "attention_mask": torch.ones(4, 16)}
    with torch.no_grad():
        ref = fp(**test).last_hidden_state
    for cls in (UniformConfig, PWLQConfig):
        q = quantize_(copy.deepcopy(fp), cls(wbits=8, act=ActSpec(bits=8)))
        assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 2 * 6 + 1
        calibrate(q, batches)
        with torch.no_grad():
            out = q(**test).last_hidden_state
        assert _rel(out, ref) < 0.05, cls.__name__
    # W4A8 PWLQ still runs and is worse than W8A8
    q4 = quantize_(copy.deepcopy(fp), PWLQConfig(wbits=4, act=ActSpec(bits=8)))
    calibrate(q4, batches)
    with torch.no_grad():
        assert _rel(out, ref) < _rel(q4(**test).last_hidden_state, ref)


def test_conv_module_type_is_quantconv2d():
    q = quantize_(_cnn(), PWLQConfig(act=None, include=["2"]))
    assert isinstance(q[2], QuantConv2d) and not isinstance(q[0], QuantConv2d)
