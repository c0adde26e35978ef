"""timm's VisionTransformer on the shared engine (skipped when timm is not installed: pip install trimformer[timm])."""

from __future__ import annotations

import pytest
import torch

timm_vit = pytest.importorskip("timm.models.vision_transformer")

from trimformer.adapters import UnsupportedModelError  # noqa: E402
from trimformer.methods import SaiTConfig, SaiTPolicy, ToMeConfig  # noqa: E402
from trimformer.pruned import TokenPrunedModel  # noqa: E402
from trimformer.vision_pipeline import build_vision_method  # noqa: E402


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
        same = build_vision_method(model, "tome", ToMeConfig(r=0))(pixel_values=_pixels())
        merged = build_vision_method(model, "tome", ToMeConfig(r=2))(pixel_values=_pixels())
    torch.testing.assert_close(same.logits, reference, atol=1e-5, rtol=1e-5)
    assert torch.all(merged.flops < merged.dense_flops)


@pytest.mark.parametrize(("kw", "match"), [({"qk_norm": True}, "qk-norm"), ({"reg_tokens": 2}, "register"),
                                           ({"class_token": False, "global_pool": "avg"}, "class token")])
def test_unsupported_timm_features_are_refused(kw, match):
    with pytest.raises(UnsupportedModelError, match=match):
        TokenPrunedModel(_timm(**kw), None)


def test_wrong_image_size_and_saving_are_explained(tmp_path):
    from trimformer.checkpoint import save_pruned

    pruned = TokenPrunedModel(_timm(), None)
    with pytest.raises(ValueError, match="img_size"):
        pruned(pixel_values=torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="state_dict"):
        save_pruned(pruned, tmp_path / "x")
