"""Blocks whose decision or merge reads few attention rows run fused attention; cached views and thresholds."""

import dataclasses

import pytest
import torch

from trimformer.core.scoring import ltp_importance
from trimformer.methods import (
    EViTConfig,
    EViTPolicy,
    LTPConfig,
    LTPPolicy,
    SaiTConfig,
    SaiTPolicy,
    ToMeConfig,
    ToMePolicy,
    TopKConfig,
    TopKPolicy,
)
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import random_batch, tiny_bert, tiny_vision_model

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=4, num_labels=5)


def _vit(seed: int = 0):
    return tiny_vision_model("vit", seed=seed, **SMALL)


def _dinov2(seed: int = 0):
    return tiny_vision_model("dinov2", seed=seed, **SMALL)


def _pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _policies() -> dict:
    return {
        "sait-topk": SaiTPolicy(4, SaiTConfig(policy="topk", default_level=0.5, stages=(1,), distill_layer=3)),
        "sait-mass": SaiTPolicy(4, SaiTConfig(policy="mass", default_level=0.8, stages=(1, 2), distill_layer=3)),
        "tome": ToMePolicy(4, ToMeConfig(r=6)),
        "evit": EViTPolicy(4, EViTConfig(keep_rate=0.6, layers=(1, 2))),
    }


@pytest.mark.parametrize("build", [_vit, _dinov2])
@pytest.mark.parametrize("method", list(_policies()))
@pytest.mark.parametrize("mode", ["packed", "masked"])
@pytest.mark.parametrize("batch", [1, 3])
def test_row_reading_blocks_equal_the_explicit_attention_path(build, method, mode, batch):
    """Class-attention decisions and merges (SaiT, EViT, ToMe) see the same scores, keep the same tokens and give
    the same outputs with fused attention as with the full probability map."""
    pruned = TokenPrunedModel(build(), _policies()[method], mode=mode)
    pixels = _pixels(batch)
    with torch.no_grad():
        fused = pruned(pixel_values=pixels)
        with pruned.options(fused_attention=False):
            explicit = pruned(pixel_values=pixels)
    assert torch.equal(fused.n_out, explicit.n_out)
    assert (fused.n_out[:, -1] < fused.n_in[:, 0]).all()  # something was removed
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=1e-5)
    if fused.token_sizes is not None:
        torch.testing.assert_close(fused.token_sizes, explicit.token_sizes)


def test_only_class_attention_decisions_read_one_row():
    pruned = TokenPrunedModel(_vit(), None)
    sait = SaiTPolicy(4, SaiTConfig(stages=(1,), distill_layer=3))
    weighted = SaiTPolicy(4, SaiTConfig(score="head_weighted", stages=(1,), distill_layer=3))
    prefix = pruned.adapter.num_prefix_tokens(pruned.model)
    assert sait.decision(1, prefix).query_rows == 1
    assert weighted.decision(1, prefix).query_rows is None  # head weighting needs every row's output
    assert ToMePolicy(4, ToMeConfig(r=2)).merge(0, prefix).query_rows == 0
    assert EViTPolicy(4, EViTConfig(layers=(1,))).merge(1, prefix).query_rows == 1
    assert TopKPolicy(4, TopKConfig(score="cls_attention")).decision(1, prefix).query_rows == 1
    assert TopKPolicy(4, TopKConfig()).decision(1, prefix).query_rows is None  # LTP scores: every row
    assert LTPPolicy(4, LTPConfig()).decision(1, prefix).query_rows is None
    assert LTPPolicy(4, LTPConfig()).decision(1, prefix).accepts_all_live
    assert weighted.decision(1, prefix).needs_values and not LTPPolicy(4, LTPConfig()).decision(1, 1).needs_values


def test_sait_row_path_passes_gradients_in_training():
    model = _vit().train()
    policy = SaiTPolicy(4, SaiTConfig(default_level=0.5, stages=(1,), distill_layer=3))
    pruned = TokenPrunedModel(model, policy, mode="masked")
    with policy.capture() as cap:
        out = pruned(pixel_values=_pixels(2), labels=torch.tensor([0, 1]))
    (out.loss + cap.at(1).scores.sum()).backward()
    query = pruned.adapter.blocks(model)[1].query
    assert query.weight.grad is not None and query.weight.grad.abs().sum() > 0


def test_swapped_layer_is_used_after_rebuilding_views():
    """Block views are built when a model is wrapped; after swapping a module, ``eval()`` (or rebuild_views)
    builds them again, and the next forward uses the new layer."""
    model = _vit()
    pruned = TokenPrunedModel(model, None)
    pixels = _pixels(2)
    with torch.no_grad():
        before = pruned(pixel_values=pixels).logits
        old = pruned.adapter.blocks(model)[2].mlp_out
        name = next(n for n, m in model.named_modules() if m is old)
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, torch.nn.Linear(old.in_features, old.out_features))
        pruned.eval()
        after = pruned(pixel_values=pixels).logits
        reference = model(pixel_values=pixels).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)


def test_ltp_threshold_changed_in_place_takes_effect_at_inference():
    model = tiny_bert()
    policy = LTPPolicy(3, LTPConfig(final_threshold=0.02))
    pruned = TokenPrunedModel(model, policy)
    ids, mask = random_batch(batch=2, length=20)
    with torch.no_grad():
        first = pruned(ids, mask).n_out.sum()
        policy.thresholds.learned.add_(0.5)  # far above every score: only [CLS] survives
        second = pruned(ids, mask).n_out
    assert first > second.sum()
    assert torch.equal(second[:, -1], torch.ones(2))


def test_ltp_importance_is_the_mean_over_heads_and_real_query_rows():
    probs = torch.softmax(torch.randn(2, 3, 7, 7), dim=-1)
    everything = torch.ones(2, 7, dtype=torch.bool)
    almost = everything.clone()
    almost[1, -1] = False
    # reference: the mean over heads and real query rows (all rows live, then one padded row)
    torch.testing.assert_close(ltp_importance(probs, everything), probs.mean(dim=(1, 2)))
    partial = ltp_importance(probs, almost)
    torch.testing.assert_close(partial[0], probs[0].mean(dim=(0, 1)))
    torch.testing.assert_close(partial[1], probs[1, :, :6].mean(dim=(0, 1)))
    torch.testing.assert_close(ltp_importance(probs, None), probs.mean(dim=(1, 2)))  # None: every row live


def test_ltp_decision_is_told_when_every_token_is_live():
    """The LTP decision gets ``alive=None`` exactly when every token of the batch is live (batch 1, packed rows,
    no padding) and the mask otherwise; pruned results match the masked run either way."""
    model = tiny_bert()
    policy = LTPPolicy(3, LTPConfig(final_threshold=0.05))
    seen: list[bool] = []
    original = policy.decision

    def spying_decision(layer: int, num_prefix: int):
        decide = original(layer, num_prefix)

        def spy(probs, alive):
            seen.append(alive is None)
            return decide.fn(probs, alive)

        return dataclasses.replace(decide, fn=spy)

    policy.decision = spying_decision
    ids, mask = random_batch(batch=2, length=20)
    assert mask[0].all() and not mask[1].all()  # the first row has no padding, the second has
    with torch.no_grad():
        packed = TokenPrunedModel(model, policy)(ids[:1], mask[:1])  # one row: live after every block
        assert seen and all(seen)
        seen.clear()
        both = TokenPrunedModel(model, policy)(ids, mask)  # padding: the mask is passed
        assert seen and not any(seen)
        masked = TokenPrunedModel(model, policy, mode="masked")(ids, mask)
    assert (packed.n_out[:, -1] < packed.n_in[:, 0]).all()
    assert torch.equal(both.n_out, masked.n_out)
    torch.testing.assert_close(both.logits, masked.logits, atol=1e-5, rtol=1e-5)
