"""Packed CPU inference runs the per-token half of a padded block on its live slots only: same results."""

import pytest
import torch
from conftest import random_batch, tiny_bert_config
from transformers import BertModel

import trimformer.blocks as blocks_module
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel


def _rows_seen(monkeypatch) -> list[tuple[int, int]]:
    """Record the [rows, slots] shape of every MLP input."""
    seen: list[tuple[int, int]] = []
    original = blocks_module.mlp_residual

    def spy(block, x):
        seen.append(tuple(x.shape[:2]))
        return original(block, x)

    monkeypatch.setattr(blocks_module, "mlp_residual", spy)
    return seen


@pytest.mark.parametrize("policy", [None, "ltp"])
def test_compacted_blocks_equal_padded_blocks(monkeypatch, policy):
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    pruned = TokenPrunedModel(model, LTPPolicy(3, LTPConfig(final_threshold=0.05)) if policy else None)
    ids, mask = random_batch(batch=4, length=24)
    assert mask.sum() < 0.85 * mask.numel()  # over 15% of the slots are padding
    seen = _rows_seen(monkeypatch)
    with torch.no_grad():
        compact = pruned(ids, mask)
        live_slots = list(seen)
        seen.clear()
        monkeypatch.setattr(blocks_module, "COMPACT_MIN_PADDING", 2.0)  # never compact
        padded = pruned(ids, mask)
    assert live_slots[0] == (1, int(mask.sum()))  # the first block ran on one flat row: exactly the real tokens
    if policy is None:
        assert all(rows == 1 for rows, _ in live_slots)
    assert all(rows == 4 for rows, _ in seen)
    real = mask.bool()
    assert torch.equal(compact.n_out, padded.n_out)
    torch.testing.assert_close(compact.last_hidden_state[real], padded.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    assert torch.all(compact.last_hidden_state[~real] == 0)  # padding slots come out zero
    if policy is None:  # pruning off: still the unmodified model at the real tokens
        reference = model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(compact.last_hidden_state[real], reference[real], atol=1e-5, rtol=1e-5)


def test_no_compaction_in_masked_mode_training_or_without_padding(monkeypatch):
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    ids, mask = random_batch(batch=4, length=24)
    seen = _rows_seen(monkeypatch)
    with torch.no_grad():
        TokenPrunedModel(model, LTPPolicy(3, LTPConfig()), mode="masked")(ids, mask)  # masked: as the official code
        TokenPrunedModel(model, None)(ids, torch.ones_like(mask))  # no padding: nothing to compact
    TokenPrunedModel(model, None)(ids, mask)  # gradients on: training runs the padded batch
    assert seen and all(rows == 4 for rows, _ in seen)
