"""Uniform quantizers: round-trip error bounds, clipping search, power-of-two scales."""

import torch

from trimformer.quant import (
    fake_quant_asymmetric,
    fake_quant_symmetric,
    mse_clip_absmax,
    quantize_symmetric,
    symmetric_scale,
)


def _w(seed: int = 0, shape=(32, 200)) -> torch.Tensor:
    spread = torch.linspace(0.1, 2.0, shape[0])[:, None]  # channels of very different scales
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * spread


def test_symmetric_per_channel_error_bound_and_codes():
    w = _w()
    for bits in (2, 4, 8, 16):
        scale = symmetric_scale(w.abs().amax(1), bits)
        codes = quantize_symmetric(w, scale, bits)
        assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 2
        err = (fake_quant_symmetric(w, scale, bits) - w).abs()
        assert bool((err <= scale[:, None] / 2 + 1e-6 * w.abs().amax()).all())  # + float32 rounding
        # the channel maximum is reproduced (to rounding)
        q = fake_quant_symmetric(w, scale, bits)
        assert torch.allclose(q.abs().amax(1), w.abs().amax(1), rtol=1e-5)


def test_per_channel_beats_per_tensor_on_scaled_channels():
    w = _w(1)
    pc = fake_quant_symmetric(w, symmetric_scale(w.abs().amax(1), 4), 4)
    pt_scale = symmetric_scale(w.abs().amax().reshape(1), 4)
    pt = fake_quant_symmetric(w.reshape(1, -1), pt_scale, 4).reshape(w.shape)
    assert (pc - w).pow(2).mean() < 0.5 * (pt - w).pow(2).mean()
    assert bool(((pt - w).abs() <= pt_scale / 2 * (1 + 1e-5)).all())


def test_mse_clip_never_worse_than_minmax():
    w = _w(2)
    w[:, 0] *= 8.0  # outliers make clipping worthwhile
    for bits in (3, 4, 6):
        full = w.abs().amax(1)
        clip = mse_clip_absmax(w, bits)
        assert bool((clip <= full).all()) and bool((clip < full).any())
        e_full = (fake_quant_symmetric(w, symmetric_scale(full, bits), bits) - w).pow(2).mean(1)
        e_clip = (fake_quant_symmetric(w, symmetric_scale(clip, bits), bits) - w).pow(2).mean(1)
        assert bool((e_clip <= e_full * (1 + 1e-6)).all())


def test_pow2_scales_are_powers_of_two_and_cover_range():
    w = _w(3)
    scale = symmetric_scale(w.abs().amax(1), 4, pow2=True)
    assert torch.equal(torch.log2(scale), torch.round(torch.log2(scale)))
    assert bool((scale >= symmetric_scale(w.abs().amax(1), 4)).all())
    assert bool(((fake_quant_symmetric(w, scale, 4) - w).abs() <= scale[:, None] / 2).all())


def test_asymmetric_round_trip_bound_and_zero_exact():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(4)) * 5 - 1  # [-1, 4]
    lo, hi = torch.tensor(-1.0), torch.tensor(4.0)
    for bits in (4, 8):
        q = fake_quant_asymmetric(x, lo, hi, bits)
        step = 5.0 / (2**bits - 1)
        assert float((q - x).abs().max()) <= step * 0.5 + step * 0.5  # zero-point rounding adds <= step/2
        assert float(fake_quant_asymmetric(torch.zeros(1), lo, hi, bits)) == 0.0
    # values outside the range are clipped
    q = fake_quant_asymmetric(torch.tensor([10.0, -10.0]), lo, hi, 8)
    assert torch.allclose(q, torch.tensor([4.0, -1.0]), atol=5.0 / 255)
