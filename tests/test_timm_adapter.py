"""timm's VisionTransformer on the shared engine.

Skipped when timm is not installed (pip install trimformer[timm]), except under TRIMFORMER_REQUIRE_TIMM=1, where a
missing timm fails the run: scripts/test.sh runs this file that way in .venv-timm (scripts/setup_timm.sh).
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from torch import nn


def _import_timm(name: str):
    """``pytest.importorskip(name)``, but a failure when TRIMFORMER_REQUIRE_TIMM=1."""
    if os.environ.get("TRIMFORMER_REQUIRE_TIMM") == "1":
        try:
            return importlib.import_module(name)
        except ImportError as err:
            pytest.fail(f"TRIMFORMER_REQUIRE_TIMM=1 but {name} does not import ({err!r}): run "
                        "scripts/setup_timm.sh and this file with .venv-timm/bin/python", pytrace=False)
    return pytest.importorskip(name)


timm_vit = _import_timm("timm.models.vision_transformer")
timm_layers = _import_timm("timm.layers")

from trimformer.adapters import UnsupportedModelError  # noqa: E402
from trimformer.methods import SaiTConfig, SaiTPolicy, ToMeConfig  # noqa: E402
from trimformer.pruned import TokenPrunedModel  # noqa: E402
from trimformer.pruning import prune  # noqa: E402


def _timm(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=5,
                init_values=0.5)
    args.update(kw)
    return timm_vit.VisionTransformer(**args).eval()


def _pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_no_pruning_equals_timm(pool):
    model = _timm(global_pool=pool)
    pruned = TokenPrunedModel(model, None)
    with torch.no_grad():
        reference = model(_pixels())
        torch.testing.assert_close(pruned(pixel_values=_pixels()).logits, reference, atol=1e-5, rtol=1e-5)
        with pruned.options(fused_attention=False):
            torch.testing.assert_close(pruned(pixel_values=_pixels()).logits, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_sait_packed_equals_masked_and_keeps_cls(pool):
    model = _timm(global_pool=pool)
    outs = {}
    for mode in ("masked", "packed"):
        pruned = TokenPrunedModel(model, SaiTPolicy(3, SaiTConfig(stages=(1,), default_level=0.5)), mode=mode)
        with torch.no_grad():
            outs[mode] = pruned(pixel_values=_pixels())
    torch.testing.assert_close(outs["packed"].logits, outs["masked"].logits, atol=1e-5, rtol=1e-5)
    assert torch.all(outs["packed"].n_out[:, 1] == 1 + 8)  # [CLS] + half of the 16 patches
    assert torch.all(outs["packed"].flops < outs["packed"].dense_flops)


def test_tome_r0_is_dense_and_r2_merges():
    model = _timm()
    with torch.no_grad():
        reference = model(_pixels())
        same = prune(model, ToMeConfig(r=0))(pixel_values=_pixels())
        merged = prune(model, ToMeConfig(r=2))(pixel_values=_pixels())
    torch.testing.assert_close(same.logits, reference, atol=1e-5, rtol=1e-5)
    assert torch.all(merged.flops < merged.dense_flops)


def _refused_feature(model: nn.Module) -> str:
    """The feature named by the refusal of ``model`` (the message part before 'is not supported')."""
    with pytest.raises(UnsupportedModelError) as err:
        TokenPrunedModel(model, None)
    message = str(err.value)
    assert "is not supported; trimformer supports timm's VisionTransformer" in message, message
    return message.split(" is not supported")[0]


def _with_attention(**kw) -> torch.nn.Module:
    """A tiny model whose last block has ``timm.layers.Attention(32, 4, qkv_bias=True, **kw)``."""
    model = _timm()
    model.blocks[-1].attn = timm_layers.Attention(32, num_heads=4, qkv_bias=True, **kw).eval()
    return model


class _Squash(nn.Module):  # an activation the adapter does not know
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (1 + x.abs())


def _distilled() -> torch.nn.Module:
    deit = _import_timm("timm.models.deit")
    return deit.VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                           num_classes=5)


REFUSED = {  # case -> (model builder, text the refused feature must contain)
    "qk_norm": (lambda: _timm(qk_norm=True), "qk-norm"),
    "reg_tokens": (lambda: _timm(reg_tokens=2), "register tokens"),
    "no_class_token": (lambda: _timm(class_token=False, global_pool="avg"), "without a class token"),
    "diff_attention": (lambda: _timm(attn_layer="diff"), "DiffAttention (attn_layer='diff'"),
    "gated_attention": (lambda: _with_attention(gated=True), "gated attention"),
    "attn_head_dim": (lambda: _with_attention(attn_head_dim=16), "attn_head_dim=16"),
    "scale_attn_norm": (lambda: _timm(scale_attn_norm=True), "scale_attn_norm=True"),
    "scale_mlp_norm": (lambda: _timm(scale_mlp_norm=True), "scale_mlp_norm=True"),
    "unknown_activation": (lambda: _timm(act_layer=_Squash), "activation _Squash"),
    "swiglu": (lambda: _timm(mlp_layer=timm_layers.SwiGLU), "MLP SwiGLU"),
    "glu_mlp": (lambda: _timm(mlp_layer=timm_layers.GluMlp), "MLP GluMlp"),
    "rms_norm": (lambda: _timm(norm_layer="rmsnorm"), "RmsNorm"),
    "res_post_block": (lambda: _timm(block_fn=timm_vit.ResPostBlock), "ResPostBlock"),
    "parallel_block": (lambda: _timm(block_fn=timm_vit.ParallelScalingBlock), "ParallelScalingBlock"),
    "map_pool": (lambda: _timm(global_pool="map"), "global_pool='map'"),
    "max_pool": (lambda: _timm(global_pool="max"), "global_pool='max'"),
    "pool_include_prefix": (lambda: _timm(global_pool="avg", pool_include_prefix=True), "pool_include_prefix"),
    "mlp_dropout": (lambda: _timm(proj_drop_rate=0.1), "dropout inside the MLP"),
    "subclass": (_distilled, "subclass VisionTransformerDistilled"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_timm_features_are_refused(case):
    build, feature = REFUSED[case]
    assert feature in _refused_feature(build())


@pytest.mark.parametrize("kw", [
    {"qkv_bias": False, "proj_bias": False}, {"init_values": None}, {"act_layer": "relu"},
    {"act_layer": "gelu_tanh"}, {"act_layer": "quick_gelu"}, {"pre_norm": True, "no_embed_class": True},
    {"fc_norm": True}, {"drop_path_rate": 0.2, "attn_drop_rate": 0.1}, {"attn_layer": "attn"},
], ids=str)
def test_accepted_variants_equal_timm(kw):
    """What the allow-list accepts is computed exactly: pruning off gives timm's own logits."""
    model = _timm(**kw)
    with torch.no_grad():
        torch.testing.assert_close(TokenPrunedModel(model, None)(pixel_values=_pixels()).logits, model(_pixels()),
                                   atol=1e-5, rtol=1e-5)


def test_attn_head_dim_equal_to_the_default_is_accepted():
    model = _with_attention(attn_head_dim=8)  # 4 heads x 8 = the width 32: the standard attention
    with torch.no_grad():
        torch.testing.assert_close(TokenPrunedModel(model, None)(pixel_values=_pixels()).logits, model(_pixels()),
                                   atol=1e-5, rtol=1e-5)


def test_wrong_image_size_and_saving_are_explained(tmp_path):
    from trimformer.checkpoint import save_pruned

    pruned = TokenPrunedModel(_timm(), None)
    with pytest.raises(ValueError, match="img_size"):
        pruned(pixel_values=torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="state_dict"):
        save_pruned(pruned, tmp_path / "x")
