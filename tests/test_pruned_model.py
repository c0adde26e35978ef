"""The BERT-family adapter and TokenPrunedModel: parity, packed == masked, [CLS], padding, refusals."""

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from trimformer.adapters import UnsupportedModelError
from trimformer.methods import LTPConfig, LTPPolicy, TopKConfig, TopKPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import random_batch, tiny_bert


def _ltp(model, final_threshold=0.08, stage="hard"):
    n = model.config.num_hidden_layers
    return LTPPolicy(n, LTPConfig(final_threshold=final_threshold), stage=stage)


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_roberta"])
def test_no_pruning_equals_original_model(fixture, request):
    model = request.getfixturevalue(fixture)
    ids, mask = random_batch()
    if fixture == "tiny_roberta":
        ids = torch.where(mask.bool(), ids.clamp_min(3), torch.ones_like(ids))  # pad id 1
    ref = model(input_ids=ids, attention_mask=mask).logits
    out = TokenPrunedModel(model, None)(ids, mask)
    assert torch.allclose(out.logits, ref, atol=1e-5)
    # A policy with pruning switched off is the same.
    pruned = TokenPrunedModel(model, _ltp(model))
    with pruned.pruning_disabled():
        assert torch.allclose(pruned(ids, mask).logits, ref, atol=1e-5)


def test_base_model_hidden_states_match(tiny_bert_base):
    ids, mask = random_batch()
    ref = tiny_bert_base(input_ids=ids, attention_mask=mask)
    out = TokenPrunedModel(tiny_bert_base, None)(ids, mask)
    real = mask.bool()
    assert torch.allclose(out.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5)
    assert torch.allclose(out.pooler_output, ref.pooler_output, atol=1e-5)


@pytest.mark.parametrize("policy_name", ["ltp", "topk"])
def test_packed_equals_masked(tiny_bert, policy_name):
    n = tiny_bert.config.num_hidden_layers
    policy = _ltp(tiny_bert) if policy_name == "ltp" else TopKPolicy(n, TopKConfig(final_keep_rate=0.3))
    model = TokenPrunedModel(tiny_bert, policy)
    ids, mask = random_batch(batch=6, length=24, seed=3)
    model.mode = "packed"
    packed = model(ids, mask)
    model.mode = "masked"
    masked = model(ids, mask)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-5)
    assert torch.equal(packed.n_out, masked.n_out)
    # Pruning really happened, by different amounts per row.
    assert (packed.n_out[:, -1] < mask.sum(1)).any()
    assert packed.flops_ratio < 1


def test_batch_one_packed_equals_batched_masked(tiny_bert):
    """Each text alone (the batch-1 fast path: no padding, no gather when nothing is dropped) gives what
    it gets in a padded masked batch."""
    model = TokenPrunedModel(tiny_bert, _ltp(tiny_bert))
    ids, mask = random_batch(batch=6, length=24, seed=3)
    model.mode = "masked"
    masked = model(ids, mask)
    model.mode = "packed"
    for row in range(ids.shape[0]):
        length = int(mask[row].sum())
        single = model(ids[row:row + 1, :length], mask[row:row + 1, :length])
        assert torch.allclose(single.logits, masked.logits[row:row + 1], atol=1e-5)
        assert torch.equal(single.n_out[0], masked.n_out[row])
        padded = model(ids[row:row + 1], mask[row:row + 1])  # one row that still carries its padding
        assert torch.allclose(padded.logits, masked.logits[row:row + 1], atol=1e-5)
    with model.pruning_disabled():  # nothing dropped anywhere: packed batch 1 is the dense model
        length = int(mask[0].sum())
        ref = tiny_bert(input_ids=ids[:1, :length]).logits
        assert torch.allclose(model(ids[:1, :length]).logits, ref, atol=1e-5)
    keep_all = TokenPrunedModel(tiny_bert, _ltp(tiny_bert, final_threshold=0.0))  # decides, keeps everything
    assert torch.allclose(keep_all(ids[:1, :length]).logits, ref, atol=1e-5)


def test_packed_equals_masked_base_model(tiny_bert_base):
    model = TokenPrunedModel(tiny_bert_base, _ltp(tiny_bert_base))
    ids, mask = random_batch(batch=5, length=16, seed=1)
    model.mode = "packed"
    packed = model(ids, mask)
    model.mode = "masked"
    masked = model(ids, mask)
    assert torch.allclose(packed.last_hidden_state, masked.last_hidden_state, atol=1e-5)


def test_cls_is_never_dropped(tiny_bert):
    model = TokenPrunedModel(tiny_bert, _ltp(tiny_bert, final_threshold=10.0))  # prunes everything else
    ids, mask = random_batch()
    out = model(ids, mask)
    assert torch.all(out.n_out == 1)
    # With one token left per row, the classifier still reads [CLS]: compare with an explicit run on [CLS].
    model.mode = "masked"
    assert torch.allclose(model(ids, mask).logits, out.logits, atol=1e-5)


def test_padding_is_respected(tiny_bert):
    model = TokenPrunedModel(tiny_bert, _ltp(tiny_bert))
    ids, mask = random_batch(batch=4, length=20, seed=5)
    batched = model(ids, mask)
    for row in range(4):
        n = int(mask[row].sum())
        alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n])
        assert torch.allclose(alone.logits, batched.logits[row:row + 1], atol=1e-5)
        assert torch.equal(alone.n_out, batched.n_out[row:row + 1])


def test_soft_stage_is_differentiable_in_thresholds(tiny_bert):
    policy = _ltp(tiny_bert, stage="soft")
    model = TokenPrunedModel(tiny_bert, policy, mode="masked")
    ids, mask = random_batch()
    out = model(ids, mask, labels=torch.tensor([0, 1, 2, 0]))
    (out.loss + out.flops_ratio).backward()
    assert policy.thresholds.learned.grad is not None
    assert policy.thresholds.learned.grad.abs().sum() > 0


def test_unsupported_models_are_refused():
    with pytest.raises(UnsupportedModelError, match="no adapter"):  # not a BERT: trimformer.testing has no GPT-2
        TokenPrunedModel(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2)))
    with pytest.raises(UnsupportedModelError, match="relative"):
        TokenPrunedModel(tiny_bert(position_embedding_type="relative_key"))
    with pytest.raises(UnsupportedModelError, match="decoder"):
        TokenPrunedModel(tiny_bert(is_decoder=True))


def test_bad_inputs_get_clear_errors(tiny_bert):
    model = TokenPrunedModel(tiny_bert, _ltp(tiny_bert))
    ids, mask = random_batch()
    left = mask.flip(1)
    with pytest.raises(ValueError, match="right padding"):
        model(ids, left)
    with pytest.raises(ValueError, match=r"\[batch, length>0\]"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="execution mode"):
        model.mode = "fast"
    too_long = tiny_bert.config.max_position_embeddings + 1  # was an index error deep in the embeddings
    with pytest.raises(ValueError, match=f"longer than the model's {too_long - 1} positions"):
        model(torch.full((1, too_long), 7))
    model(torch.full((1, too_long - 1), 7))  # the longest input it holds runs


def test_roberta_positions_start_after_the_padding_index(tiny_roberta):
    from trimformer.adapters.bert import text_positions

    held = text_positions(tiny_roberta.config)
    assert held == tiny_roberta.config.max_position_embeddings - tiny_roberta.config.pad_token_id - 1
    model = TokenPrunedModel(tiny_roberta)
    model(torch.full((1, held), 7))
    with pytest.raises(ValueError, match="truncation=True"):
        model(torch.full((1, held + 1), 7))


def test_stacked_qkv_projection_matches_separate_and_follows_weight_changes(tiny_bert):
    from trimformer.engine.attention import scaled_qkv, split_heads
    from trimformer.engine.linears import Linears, WeightCache

    view = TokenPrunedModel(tiny_bert).adapter.blocks(tiny_bert)[0]
    linears = Linears("auto", WeightCache())
    h = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.enable_grad():
        separate = scaled_qkv(view, h, linears)  # gradients on: one projection at a time
    with torch.no_grad():
        stacked = scaled_qkv(view, h, linears)
        assert linears.cache.holds(view.query, "qkv")  # the stacked weights were built and cached
        for a, b in zip(separate, stacked, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        view.key.weight.mul_(2.0)  # an in-place change must rebuild the cached stacked weights
        doubled_key = scaled_qkv(view, h, linears)[1]
    torch.testing.assert_close(doubled_key, 2.0 * separate[1] - split_heads(
        view.key.bias.expand(2, 7, 32), view.num_heads).detach(), rtol=1e-5, atol=1e-5)
