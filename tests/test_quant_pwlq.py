"""PWLQ on synthetic channels: beats uniform, closed forms near the searched optimum, bias correction."""

import pytest
import torch

from trimformer.quant import (
    PWLQConfig,
    UniformConfig,
    bias_correction_params,
    code_bits,
    fake_quant_pwlq,
    fake_quant_symmetric,
    piece_layout,
    pwlq_decode,
    pwlq_encode,
    pwlq_params,
    quantize_weight,
    symmetric_scale,
)


def _gauss(c: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(c, n, generator=torch.Generator().manual_seed(seed))


def _laplace(c: int, n: int, seed: int) -> torch.Tensor:
    u = torch.rand(c, n, generator=torch.Generator().manual_seed(seed)) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs())


def _mse(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (q - w).pow(2).mean(dim=1)


def _uniform(w: torch.Tensor, bits: int) -> torch.Tensor:
    return fake_quant_symmetric(w, symmetric_scale(w.abs().amax(1), bits), bits)


@pytest.mark.parametrize("make", [_gauss, _laplace])
def test_pwlq4_beats_uniform4(make):
    w = make(32, 1024, 0)
    u = _mse(_uniform(w, 4), w).mean()
    for bp in ("gaussian", "laplace", "search"):
        assert _mse(fake_quant_pwlq(w, 4, bp), w).mean() < 0.8 * u


@pytest.mark.parametrize("region_bit", ["extra", "inside"])
def test_closed_forms_within_2pct_of_search(region_bit):
    """The paper's Gaussian closed form stays within 2% of the searched optimum on Gaussian AND Laplacian
    channels at 4 bits (its operating point); the Laplace form on Laplacian channels too."""
    bits = code_bits(4, 1, region_bit)
    wg, wl = _gauss(16, 8192, 1), _laplace(16, 8192, 2)
    s_g = _mse(fake_quant_pwlq(wg, bits, "search"), wg).mean()
    s_l = _mse(fake_quant_pwlq(wl, bits, "search"), wl).mean()
    assert _mse(fake_quant_pwlq(wg, bits, "gaussian"), wg).mean() <= 1.02 * s_g
    assert _mse(fake_quant_pwlq(wl, bits, "gaussian"), wl).mean() <= 1.02 * s_l
    assert _mse(fake_quant_pwlq(wl, bits, "laplace"), wl).mean() <= 1.02 * s_l


def test_region_bit_modes_store_what_they_say():
    w = _gauss(8, 2048, 7)
    extra = quantize_weight(w, PWLQConfig(wbits=4, bias_correction=False))
    inside = quantize_weight(w, PWLQConfig(wbits=4, bias_correction=False, region_bit="inside"))
    assert (extra.bits, inside.bits) == (5, 4)
    assert extra.grid_values()[0].unique().numel() <= 32 and inside.grid_values()[0].unique().numel() <= 16
    # "extra" has the level count of 5-bit uniform and must beat it; "inside" that of 4-bit uniform
    assert _mse(extra.grid_values(), w).mean() < _mse(_uniform(w, 5), w).mean()
    assert _mse(inside.grid_values(), w).mean() < _mse(_uniform(w, 4), w).mean()


@pytest.mark.parametrize("bits", [3, 4, 6, 8])
@pytest.mark.parametrize("pow2", [False, True])
def test_search_never_worse_per_channel(bits, pow2):
    w = torch.cat([_gauss(8, 300, 3), _laplace(8, 300, 4)])
    s = _mse(fake_quant_pwlq(w, bits, "search", pow2=pow2), w)
    for bp in ("gaussian", "laplace"):
        assert bool((s <= _mse(fake_quant_pwlq(w, bits, bp, pow2=pow2), w) * (1 + 1e-6)).all())


def test_codes_layout_and_levels():
    w = _laplace(4, 500, 5)
    for bits, nbp in ((4, 1), (4, 2), (5, 3), (8, 1)):
        offsets, steps, rb = pwlq_params(w, bits, "search" if nbp > 1 else "gaussian", nbp)
        assert rb == piece_layout(bits, nbp)[0] and offsets.shape == (4, nbp + 1)
        codes = pwlq_encode(w, offsets, steps, bits, rb)
        assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
        q = pwlq_decode(codes, offsets, steps, bits, rb)
        assert torch.equal(pwlq_encode(q, offsets, steps, bits, rb), codes)  # levels sit inside their bins
        assert q[0].unique().numel() <= 2**bits
        assert bool((torch.sign(q) == torch.sign(w)).all())  # sign bit kept (no exact zeros here)
        # each weight's error is at most half a step of its piece
        err = (q - w).abs()
        assert bool((err <= steps.amax(1, keepdim=True) / 2 * (1 + 1e-5)).all())


def test_multi_breakpoints_help_on_laplace():
    w = _laplace(16, 2048, 6)
    one = _mse(fake_quant_pwlq(w, 5, "search", 1), w).mean()
    three = _mse(fake_quant_pwlq(w, 5, "search", 3), w).mean()
    assert three < one


def test_pow2_steps_are_powers_of_two():
    w = _gauss(8, 256, 7)
    offsets, steps, _ = pwlq_params(w, 4, "gaussian", pow2=True)
    assert torch.equal(torch.log2(steps), torch.round(torch.log2(steps)))
    assert bool((offsets[:, 1] + 4 * steps[:, 1] >= w.abs().amax(1)).all())  # tail still covers m


@pytest.mark.parametrize("cls", [PWLQConfig, UniformConfig])
def test_bias_correction_matches_float_mean_and_std(cls):
    w = _gauss(16, 128, 8) * 0.05 + 0.01 * torch.randn(16, 1, generator=torch.Generator().manual_seed(9))
    q = quantize_weight(w, cls(wbits=3, bias_correction=True)).dequantize()
    q0 = quantize_weight(w, cls(wbits=3, bias_correction=False)).dequantize()
    assert torch.allclose(q.mean(1), w.mean(1), atol=1e-6)
    assert torch.allclose(q.std(1), w.std(1), rtol=1e-4)
    assert not torch.allclose(q0.std(1), w.std(1), rtol=1e-3)  # it had something to correct
    gain, shift = bias_correction_params(w, q0)
    assert torch.allclose(q, q0 * gain[:, None] + shift[:, None])


def test_zero_and_constant_channels_are_safe():
    w = torch.zeros(3, 16)
    w[1] = 0.5
    for cls in (PWLQConfig, UniformConfig):
        q = quantize_weight(w, cls(wbits=4)).dequantize()
        assert bool(torch.isfinite(q).all())
        assert torch.allclose(q, w, atol=1e-6)
