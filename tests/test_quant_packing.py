"""Bit packing: codes and weights survive pack/unpack bit-identically; sizes are what the bits say."""

import json
import math

import pytest
import torch
from torch import nn

from trimformer.quant import (
    PWLQConfig,
    UniformConfig,
    config_from_dict,
    load_packed,
    pack_bits,
    pack_weight,
    packed_nbytes,
    quantize_,
    quantize_weight,
    save_packed,
    unpack_bits,
    unpack_weight,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8, 11, 16])
@pytest.mark.parametrize("n", [1, 7, 8, 1001])
def test_pack_unpack_codes(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits * n))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes.to(torch.int32))


def test_pack_bits_layout_is_lsb_first():
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack_bits(torch.tensor([0x1FF]), 9).tolist() == [0xFF, 0x01]


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize(
    "cfg",
    [
        UniformConfig(wbits=4, bias_correction=False),
        UniformConfig(wbits=8, weight_clip="mse", pow2_scale=True),
        PWLQConfig(wbits=4),
        PWLQConfig(wbits=6, breakpoint="search", bias_correction=False, pow2_scale=True),
        PWLQConfig(wbits=5, breakpoint="search", num_breakpoints=3, per_channel=False),
    ],
)
def test_weight_round_trip_bit_identical(cfg):
    w = torch.randn(24, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    qw = quantize_weight(w, cfg)
    d = pack_weight(qw)
    assert ("gain" in d) == cfg.bias_correction
    back = unpack_weight(d)
    assert torch.equal(back.codes, qw.codes)
    assert _bits_equal(back.dequantize(), qw.dequantize())
    stored_bits = cfg.wbits + (2 if cfg.num_breakpoints == 3 else 1) if cfg.scheme == "pwlq" else cfg.wbits
    assert qw.bits == stored_bits  # PWLQ's default region_bit="extra" stores the region bit(s) on top of b
    payload = math.ceil(w.numel() * stored_bits / 8)
    assert payload <= packed_nbytes(d) < payload + 1200  # codes + per-channel params + a few ints


def test_model_save_load_bit_identical(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.Conv2d(4, 8, 3, groups=2))
    quantize_(m, PWLQConfig(wbits=4, act=None, layer_wbits={"2": 6}))
    path = tmp_path / "m.safetensors"
    nbytes = save_packed(m, path)
    sd, meta = load_packed(path)
    assert config_from_dict(json.loads(meta["quant_config"])) == config_from_dict(m.trimformer_quant_config)
    for key, t in m.state_dict().items():
        assert _bits_equal(sd[key], t), key
    fp32_bytes = sum(p.numel() * 4 for p in m.parameters())
    assert nbytes < 0.3 * fp32_bytes  # 5/7-bit codes (PWLQ 4/6 + region bit) + per-channel params + biases
    fresh = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.Conv2d(4, 8, 3, groups=2))
    fresh.load_state_dict(sd)
    x = torch.randn(2, 64)
    assert torch.equal(fresh[:3](x), m[:3](x))
