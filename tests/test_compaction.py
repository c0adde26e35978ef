"""Packed CPU inference runs the per-token half of a padded block on its live slots only: same results."""

import pytest
import torch
from transformers import BertModel

from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import random_batch, tiny_bert


def _mlp_rows_seen(model: BertModel) -> list[tuple[int, int]]:
    """Record the [rows, slots] shape of every MLP input (a forward hook on each block's first MLP linear; the
    tests run the 'torch' linear kernel, which calls the module)."""
    seen: list[tuple[int, int]] = []
    for layer in model.encoder.layer:
        layer.intermediate.dense.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape[:2])))
    return seen


@pytest.mark.parametrize("policy", [None, "ltp"])
def test_compacted_blocks_equal_padded_blocks(policy):
    model = tiny_bert(base=True)
    pruned = TokenPrunedModel(model, LTPPolicy(3, LTPConfig(final_threshold=0.05)) if policy else None,
                              linear_kernel="torch")
    ids, mask = random_batch(batch=4, length=24)
    assert mask.sum() < 0.85 * mask.numel()  # over 15% of the slots are padding
    seen = _mlp_rows_seen(model)
    with torch.no_grad():
        compact = pruned(ids, mask)
        live_slots = list(seen)
        seen.clear()
        with pruned.options(compact_min_padding=2.0):  # never compact
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


def test_no_compaction_in_masked_mode_training_or_without_padding():
    model = tiny_bert(base=True)
    ids, mask = random_batch(batch=4, length=24)
    seen = _mlp_rows_seen(model)
    with torch.no_grad():
        # masked: as the official code
        TokenPrunedModel(model, LTPPolicy(3, LTPConfig()), mode="masked", linear_kernel="torch")(ids, mask)
        TokenPrunedModel(model, None, linear_kernel="torch")(ids, torch.ones_like(mask))  # no padding
    TokenPrunedModel(model, None, linear_kernel="torch")(ids, mask)  # gradients on: training runs the padded batch
    assert seen and all(rows == 4 for rows, _ in seen)
