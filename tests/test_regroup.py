"""Regrouping a packed batch by kept-token counts: the plan, and results identical to one padded batch."""

import pytest
import torch
from conftest import random_batch

import trimformer.engine.runner as runner_module
from trimformer.core.packing import plan_row_groups
from trimformer.methods import LTPConfig, LTPPolicy, SaiTConfig, ToMeConfig
from trimformer.pruned import TokenPrunedModel
from trimformer.pruning import prune
from trimformer.testing import tiny_vision_model


def test_plan_splits_only_where_padding_falls_enough():
    assert plan_row_groups([10] * 16) == [list(range(16))]  # equal counts: nothing to gain
    assert plan_row_groups([10, 90] * 7) == [[0, 2, 4, 6, 8, 10, 12, 1, 3, 5, 7, 9, 11, 13]]  # groups of 8 needed
    groups = plan_row_groups([10, 90] * 8)
    assert groups == [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15]]
    assert len(plan_row_groups([1, 9] * 8)) == 1  # 80% padding, but only 64 tokens of it
    assert plan_row_groups([50 + i for i in range(16)]) == [list(range(16))]  # under 10% to save
    counts = torch.randint(5, 100, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    groups = plan_row_groups(counts, max_groups=4)
    assert sorted(r for g in groups for r in g) == list(range(64)) and 2 <= len(groups) <= 4
    assert all(len(g) >= 8 for g in groups)
    padded = sum(len(g) * max(counts[r] for r in g) for g in groups)
    assert padded < 0.8 * 64 * max(counts)


def _forced_split(monkeypatch, calls: list):
    """Split every reducing block's batch into odd and even rows (an order the plan would never pick)."""
    def plan(counts):
        calls.append(len(counts))
        if len(counts) < 4:
            return [list(range(len(counts)))]
        return [list(range(1, len(counts), 2)), list(range(0, len(counts), 2))]
    monkeypatch.setattr(runner_module, "plan_row_groups", plan)


def _both(model: TokenPrunedModel, **inputs):
    with model.options(regroup=False):
        one = model(**inputs)
    return one, model(**inputs)


def _same(one, split):
    assert torch.allclose(split.logits, one.logits, atol=1e-5)
    for key in ("n_in", "n_out", "n_rows", "flops"):
        assert torch.allclose(getattr(split, key), getattr(one, key)), key


def _ltp_text(bert):
    """A tiny BERT under LTP and a padded batch of 8 texts."""
    model = TokenPrunedModel(bert, LTPPolicy(bert.config.num_hidden_layers, LTPConfig(final_threshold=0.08)))
    ids, mask = random_batch(batch=8, length=24, seed=3)
    return model, ids, mask


@torch.inference_mode()
def test_ltp_text_regrouped_equals_one_batch(tiny_bert, monkeypatch):
    calls: list = []
    _forced_split(monkeypatch, calls)
    model, ids, mask = _ltp_text(tiny_bert)
    one, split = _both(model, input_ids=ids, attention_mask=mask)
    assert calls, "the batch was never split"
    _same(one, split)
    assert (one.n_out[:, -1] < mask.sum(1)).any()


@torch.inference_mode()
def test_base_model_hidden_states_regrouped(tiny_bert_base, monkeypatch):
    _forced_split(monkeypatch, [])
    model = TokenPrunedModel(tiny_bert_base, LTPPolicy(tiny_bert_base.config.num_hidden_layers,
                                                       LTPConfig(final_threshold=0.08)))
    ids, mask = random_batch(batch=6, length=16, seed=1)
    one, split = _both(model, input_ids=ids, attention_mask=mask)
    assert torch.allclose(split.last_hidden_state, one.last_hidden_state, atol=1e-5)
    assert torch.allclose(split.pooler_output, one.pooler_output, atol=1e-5)


def _vit():
    return tiny_vision_model("vit")


@pytest.mark.parametrize("method,config", [("sait", SaiTConfig(policy="mass", stages=(1, 2), default_level=0.6)),
                                           ("tome", ToMeConfig(r=3))])
@torch.inference_mode()
def test_vision_regrouped_equals_one_batch(method, config, monkeypatch):
    calls: list = []
    _forced_split(monkeypatch, calls)
    model = prune(_vit(), config)
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    one, split = _both(model, pixel_values=pixels)
    assert calls
    _same(one, split)
    if method == "tome":
        assert torch.allclose(split.token_sizes, one.token_sizes)


def test_no_regrouping_while_training_or_masked(tiny_bert, monkeypatch):
    calls: list = []
    _forced_split(monkeypatch, calls)
    model, ids, mask = _ltp_text(tiny_bert)
    model(ids, mask)  # gradients on
    with torch.inference_mode():
        model.mode = "masked"
        model(ids, mask)
    assert not calls
