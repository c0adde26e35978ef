"""timm's VisionTransformer on the shared engine.

Skipped when timm is not installed (pip install trimformer[timm]), except under TRIMFORMER_REQUIRE_TIMM=1, where a
missing timm fails the run: scripts/test.sh runs this file that way in .venv-timm (scripts/setup_timm.sh).
"""

from __future__ import annotations

import dataclasses
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


# --- the fused qkv projection (BlockView.qkv) ---------------------------------------------------------------------

def _slice_path(monkeypatch, adapter) -> None:
    """Make ``adapter`` build views without the fused projection: the engine then runs the three slice views."""
    fused_blocks = type(adapter).blocks
    monkeypatch.setattr(type(adapter), "blocks",
                        lambda self, model: [dataclasses.replace(v, qkv=None) for v in fused_blocks(self, model)])


def test_views_expose_the_fused_qkv_and_inference_caches_its_scaled_weight():
    from trimformer.engine.attention import scaled_qkv
    from trimformer.engine.linears import Linears, WeightCache

    model = _timm()
    pruned = TokenPrunedModel(model, None)
    views = pruned.adapter.blocks(model)
    assert [v.qkv for v in views] == [b.attn.qkv for b in model.blocks]
    assert views[0].hidden_size == 32 and views[0].query_scale == 8 ** -0.5
    calls = []
    handles = [b.attn.qkv.register_forward_hook(lambda *_: calls.append(1)) for b in model.blocks]
    with torch.no_grad():
        pruned(pixel_values=_pixels())
    for h in handles:
        h.remove()
    assert not calls  # at inference the module is not called: its cached pre-scaled weight is used
    assert all(pruned._weights.holds(b.attn.qkv, "qkv") for b in model.blocks)

    # the fused projection against the slice views, with the oneDNN packing forced where this build has it
    view, h = views[0], torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(2))
    linears = Linears("onednn", WeightCache())
    with torch.no_grad():
        fused = scaled_qkv(view, h, linears)
        sliced = scaled_qkv(dataclasses.replace(view, qkv=None), h, Linears("torch", WeightCache()))
    assert linears.cache.holds(view.qkv, "qkv") and not linears.cache.holds(view.query, "qkv")
    for a, b in zip(fused, sliced, strict=True):
        assert a.shape == (2, 4, 17, 8)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sait", [False, True], ids=["dense", "sait"])
@pytest.mark.parametrize("qkv_bias", [True, False], ids=["bias", "no_bias"])
def test_fused_qkv_equals_the_slice_path(monkeypatch, sait, qkv_bias):
    model = _timm(qkv_bias=qkv_bias)
    policy = SaiTPolicy(3, SaiTConfig(stages=(1,), default_level=0.5)) if sait else None
    wrapper = TokenPrunedModel(model, policy)
    _slice_path(monkeypatch, wrapper.adapter)
    slices = TokenPrunedModel(model, policy)
    assert wrapper._views[0].qkv is model.blocks[0].attn.qkv and slices._views[0].qkv is None
    with torch.no_grad():
        fused, sliced = wrapper(pixel_values=_pixels()), slices(pixel_values=_pixels())
    torch.testing.assert_close(fused.logits, sliced.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.n_out, sliced.n_out)
    if sait:
        assert torch.all(fused.n_out[:, 1] == 1 + 8)  # pruning on: [CLS] + half of the 16 patches
    else:
        with torch.no_grad():
            torch.testing.assert_close(fused.logits, model(_pixels()), atol=1e-5, rtol=1e-5)


def test_in_place_change_of_the_fused_weight_is_picked_up():
    model = _timm()
    pruned = TokenPrunedModel(model, None)
    with torch.no_grad():
        before = pruned(pixel_values=_pixels()).logits
        for block in model.blocks:
            block.attn.qkv.weight.mul_(1.5)  # in place: the cached scaled copy must be rebuilt
            block.attn.qkv.bias.add_(0.1)
        after = pruned(pixel_values=_pixels()).logits
        reference = model(_pixels())
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_fused_qkv_in_training():
    model = _timm(attn_drop_rate=0.1).train()
    pruned = TokenPrunedModel(model, SaiTPolicy(3, SaiTConfig(stages=(1,), default_level=0.5)), mode="masked")
    assert all(v.training for v in pruned._views)
    out = pruned(pixel_values=_pixels(), labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    for block in model.blocks:
        assert block.attn.qkv.weight.grad is not None and block.attn.qkv.weight.grad.abs().sum() > 0
    assert not pruned._weights.holds(model.blocks[0].attn.qkv, "qkv")  # training builds no inference copy


def test_qkv_bias_false_runs_the_fused_path():
    model = _timm(qkv_bias=False)
    assert model.blocks[0].attn.qkv.bias is None
    pruned = TokenPrunedModel(model, None)
    with torch.no_grad():
        torch.testing.assert_close(pruned(pixel_values=_pixels()).logits, model(_pixels()), atol=1e-5, rtol=1e-5)
    assert pruned._weights.holds(model.blocks[0].attn.qkv, "qkv")


def test_quantized_fused_qkv_is_called_as_a_module():
    """A quantized qkv (not a plain nn.Linear) runs as itself, its input quantizer included: timm's own forward of
    the quantized model is reproduced."""
    from trimformer.quant import ActSpec, UniformConfig, calibrate, quantize_

    model = _timm()
    pruned = TokenPrunedModel(model, None)
    quantize_(model, UniformConfig(wbits=8, act=ActSpec(bits=4, clip="minmax")))
    calibrate(model, [_pixels(4)])
    pruned.rebuild_views()
    qkv = model.blocks[0].attn.qkv
    assert type(qkv) is not nn.Linear and pruned._views[0].qkv is qkv
    with torch.no_grad():
        torch.testing.assert_close(pruned(pixel_values=_pixels()).logits, model(_pixels()), atol=1e-5, rtol=1e-5)
    assert not pruned._weights.holds(qkv, "qkv")
