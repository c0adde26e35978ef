"""``trimformer quantize`` flags -> the config type ``--scheme`` names (the end-to-end runs are in test_cli.py)."""

import re

import pytest

from trimformer.cli import build_parser, main
from trimformer.cli.commands import quant_config_from_args
from trimformer.quant import ActSpec, PWLQConfig, UniformConfig


def _config(*flags: str):
    return quant_config_from_args(build_parser().parse_args(["quantize", "ckpt", "--out", "o", *flags]))


def test_defaults_are_the_config_defaults():
    assert _config() == PWLQConfig()
    assert _config("--scheme", "uniform") == UniformConfig()


def test_flags_reach_the_config():
    assert _config("--wbits", "5", "--abits", "4", "--breakpoint", "search", "--num-breakpoints", "2",
                   "--region-bit", "inside", "--act-scheme", "pwlq", "--act-clip", "mse", "--no-bias-correction",
                   "--per-tensor", "--pow2-scale", "--exclude", "classifier", "--layer-wbits", "pooler*=8") == \
        PWLQConfig(wbits=5, act=ActSpec(bits=4, clip="mse", scheme="pwlq", region_bit="inside"),
                   breakpoint="search", num_breakpoints=2, region_bit="inside", bias_correction=False,
                   per_channel=False, pow2_scale=True, exclude=["classifier"], layer_wbits={"pooler*": 8})
    assert _config("--scheme", "uniform", "--weight-clip", "mse", "--abits", "0") == \
        UniformConfig(weight_clip="mse", act=None)
    assert _config("--scheme", "uniform", "--act-scheme", "pwlq", "--region-bit", "inside") == \
        UniformConfig(act=ActSpec(bits=8, scheme="pwlq", region_bit="inside"))


@pytest.mark.parametrize("flags, match", [
    (["--scheme", "uniform", "--breakpoint", "search"], "--breakpoint does not apply to --scheme uniform"),
    (["--scheme", "uniform", "--num-breakpoints", "1"], "--num-breakpoints does not apply to --scheme uniform"),
    (["--weight-clip", "mse"], "--weight-clip does not apply to --scheme pwlq"),
    (["--abits", "0", "--act-clip", "mse"], "--act-clip does not apply with --abits 0 (weights only)"),
    (["--abits", "0", "--act-scheme", "pwlq"], "--act-scheme does not apply with --abits 0"),
    (["--scheme", "uniform", "--region-bit", "inside"],
     "--region-bit does not apply to --scheme uniform with uniform activations"),
])
def test_a_flag_of_another_scheme_is_refused(flags, match, capsys):
    with pytest.raises(ValueError, match=re.escape(match)):
        _config(*flags)
    assert main(["quantize", "missing-checkpoint", "--data", "d.csv", "--out", "o", *flags]) == 2
    assert match in capsys.readouterr().err


def test_reconstruction_flags_reach_the_config():
    from trimformer.quant import AdaRoundConfig, BRECQConfig, RAPQConfig

    assert _config("--scheme", "rapq", "--iters", "50", "--calib-images", "64") == RAPQConfig(iters=50,
                                                                                             calib_samples=64)
    assert _config("--scheme", "adaround", "--bias-correction") == AdaRoundConfig(bias_correction=True)
    assert _config("--scheme", "brecq", "--recon-loss", "fisher") == BRECQConfig(recon_loss="fisher")
    with pytest.raises(ValueError, match="--recon-loss does not apply to --scheme uniform"):
        _config("--scheme", "uniform", "--recon-loss", "fisher")
    with pytest.raises(ValueError, match="--iters does not apply to --scheme pwlq"):
        _config("--iters", "5")
    with pytest.raises(ValueError, match="--calib-images does not apply to --scheme uniform"):
        _config("--scheme", "uniform", "--calib-images", "5")
