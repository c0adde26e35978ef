"""PWLQ for activations: one-sided (ReLU/GELU) and two-sided ranges, exact zeros, better than uniform."""

import torch
from torch import nn

from trimformer.quant import ActSpec, PWLQConfig, calibrate, quantize_
from trimformer.quant.act_pwlq import (
    act_levels,
    fake_quant_act_pwlq,
    is_one_sided,
    search_act_breakpoint,
)
from trimformer.quant.uniform import fake_quant_asymmetric


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mse(q: torch.Tensor, x: torch.Tensor) -> float:
    return float((q - x).pow(2).mean())


def _pwlq(x: torch.Tensor, lo: float, hi: float, bits: int, region_bit: str = "extra") -> torch.Tensor:
    one = is_one_sided(lo, hi)
    levels = act_levels(bits, one, region_bit)
    p = search_act_breakpoint(x, lo, hi, levels, one)
    return fake_quant_act_pwlq(x, lo, hi, p, levels, one)


def test_one_sided_ranges_are_detected():
    assert is_one_sided(0.0, 5.0) and is_one_sided(-0.17, 5.0)  # ReLU, GELU
    assert not is_one_sided(-3.0, 5.0)


def test_relu_zeros_stay_exact_and_range_ends_are_levels():
    x = torch.relu(torch.randn(20000, generator=_gen(0)) * 2)
    q = _pwlq(x, 0.0, float(x.max()), 4)
    assert bool((q[x == 0] == 0).all())
    assert float(q.max()) == float(x.max())
    assert q.unique().numel() <= 2 * 2**4  # one-sided 4-bit + region bit: 2 pieces x 16 levels


def test_gelu_negative_lobe_is_kept_not_clipped():
    x = torch.nn.functional.gelu(torch.randn(20000, generator=_gen(1)) * 2)
    lo, hi = float(x.min()), float(x.max())
    q = _pwlq(x, lo, hi, 4)
    assert float(q.min()) < 0 and abs(float(q.min()) - lo) < 1e-6


def test_beats_uniform_with_the_same_level_count_on_heavy_tails():
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    torch.manual_seed(0)
    for lo, hi, y in ((float(x.min()), float(x.max()), x), (0.0, float(x.max()), torch.relu(x))):
        uniform = fake_quant_asymmetric(y, torch.tensor(lo), torch.tensor(hi), 4)
        assert _mse(_pwlq(y, lo, hi, 4, region_bit="inside"), y) < _mse(uniform, y)


def test_config_option_calibrates_and_round_trips_state():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    quantize_(m, PWLQConfig(wbits=8, act=ActSpec(bits=4, scheme="pwlq")))
    x = torch.randn(64, 16)
    calibrate(m, [x])
    q0, q2 = m[0].input_quant, m[2].input_quant
    assert float(q2.lo) == 0.0 and 0 < float(q2.breakpoint) < float(q2.hi)  # after ReLU: one-sided
    assert float(q0.lo) < 0 < float(q0.breakpoint)  # raw input: two-sided
    fresh = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    quantize_(fresh, PWLQConfig(wbits=8, act=ActSpec(bits=4, scheme="pwlq")))
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), m(x))
