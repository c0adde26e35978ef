"""ViT / DeiT / Dinov2 (LayerScale) adapter: parity with pruning off, packed == masked, prefix tokens, refusals."""

import pytest
import torch

from trimformer.adapters import UnsupportedModelError
from trimformer.core.scoring import class_attention
from trimformer.methods import TopKConfig, TopKPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import tiny_vision_model

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8, num_labels=5)


def _vit():
    return tiny_vision_model("vit", seed=None, **SMALL)


def _deit():
    return tiny_vision_model("deit", seed=None, **SMALL)


def _deit_teacher():
    return tiny_vision_model("deit_teacher", seed=None, **SMALL)


def _dinov2():
    return tiny_vision_model("dinov2", seed=None, **SMALL)  # LayerScale in [0.2, 1.5]: a missing one would show


BUILDERS = {"vit": _vit, "deit": _deit, "deit_teacher": _deit_teacher, "dinov2": _dinov2}


def _pixels(batch=3, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_no_pruning_equals_original(name):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    pixels = _pixels()
    ref = model(pixel_values=pixels).logits
    out = TokenPrunedModel(model, None)(pixel_values=pixels)
    assert torch.allclose(out.logits, ref, atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_base_models_match(family):
    torch.manual_seed(0)
    model = tiny_vision_model(family, seed=None, base=True, **SMALL)
    pixels = _pixels()
    ref = model(pixel_values=pixels)
    out = TokenPrunedModel(model, None)(pixel_values=pixels)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("score", ["ltp", "cls_attention"])
def test_packed_equals_masked_and_prefix_kept(name, score):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    policy = TopKPolicy(3, TopKConfig(final_keep_rate=0.25, score=score))
    pruned = TokenPrunedModel(model, policy, mode="packed")
    pixels = _pixels(batch=4)
    packed = pruned(pixel_values=pixels)
    pruned.mode = "masked"
    masked = pruned(pixel_values=pixels)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-5)
    assert torch.equal(packed.n_out, masked.n_out)
    prefix = 2 if name.startswith("deit") else 1
    assert torch.all(packed.n_out[:, -1] >= prefix)
    assert packed.flops_ratio < 0.8


def test_class_attention_reads_the_cls_row():
    probs = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    assert torch.allclose(class_attention(probs), probs[:, :, 0].mean(1))


def test_refusals_and_bad_images():
    with pytest.raises(UnsupportedModelError, match="SwiGLU"):
        TokenPrunedModel(tiny_vision_model("dinov2", seed=None, base=True, use_swiglu_ffn=True, **SMALL))
    pruned = TokenPrunedModel(_vit().eval(), None)
    with pytest.raises(ValueError, match="NaN"):
        pruned(pixel_values=torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="image_size|size"):
        pruned(pixel_values=torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match="pixel_values"):
        pruned(input_ids=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="score must be"):
        TopKConfig(score="random")
