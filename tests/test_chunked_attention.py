"""Row-chunked attention in deciding blocks (inference): the same results as the whole batch at once."""

import dataclasses

import pytest
import torch
from conftest import random_batch
from test_regroup import _ltp_text, _vit

from trimformer.engine.attention import chunk_rows
from trimformer.engine.hooks import LayerHooks
from trimformer.methods import ASViTConfig, SaiTConfig
from trimformer.pruning import prune


def _record_decision_rows(model) -> list[int]:
    """Record the batch rows each decision call sees (one call per chunk), by wrapping the policy's hooks."""
    rows: list[int] = []
    policy_hooks = model.policy.hooks

    def recording(fn):
        def decide(probs, *args):
            rows.append(probs.shape[0])
            return fn(probs, *args)
        return decide

    def hooks(num_prefix):
        forward = policy_hooks(num_prefix)
        layers = tuple(LayerHooks(dataclasses.replace(h.decide, fn=recording(h.decide.fn))) if h.decide else h
                       for h in forward.layers)
        return dataclasses.replace(forward, layers=layers)

    model.policy.hooks = hooks
    return rows


def _whole_and_chunked(model, **inputs):
    """Outputs with the default chunk budget (these tiny batches fit in one chunk) and with one row per chunk."""
    whole = model(**inputs)
    with model.options(attention_chunk_bytes=1):
        return whole, model(**inputs)


def _same(whole, chunked):
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=1e-5, atol=1e-5)
    for key in ("n_in", "n_out", "flops"):
        assert torch.equal(getattr(chunked, key), getattr(whole, key)), key


def test_chunk_rows_respect_the_budget():
    budget = 2 << 20
    assert chunk_rows(32, 12, 128, 4, budget) == 2  # 768 kB per row under 2 MiB
    assert chunk_rows(32, 12, 512, 4, budget) == 1  # a row over budget still runs alone
    assert chunk_rows(3, 1, 8, 4, budget) == 3  # a small batch is one chunk
    assert chunk_rows(5, 2, 8, 4, 1) == 1
    assert chunk_rows(5, 2, 8, 4, 0) == 5  # 0: never chunk


@pytest.mark.parametrize("mode", ["packed", "masked"])
@torch.inference_mode()
def test_ltp_chunked_equals_whole_batch(tiny_bert, mode):
    model, ids, mask = _ltp_text(tiny_bert)
    model.set_options(mode=mode, regroup=False)
    rows = _record_decision_rows(model)
    whole = model(input_ids=ids, attention_mask=mask)
    assert rows and all(r == ids.shape[0] for r in rows)  # one chunk under the default budget
    rows.clear()
    with model.options(attention_chunk_bytes=1):
        chunked = model(input_ids=ids, attention_mask=mask)
    assert rows and all(r == 1 for r in rows), "deciding blocks did not run chunked in inference"
    _same(whole, chunked)
    assert (whole.n_out[:, -1] < mask.sum(1)).any()  # something was pruned


@pytest.mark.parametrize("method,config", [("sait", SaiTConfig(policy="mass", stages=(1, 2), default_level=0.6)),
                                           ("sait", SaiTConfig(policy="topk", default_level=0.5)),
                                           ("asvit", ASViTConfig(target_flops=0.6))])
@torch.inference_mode()
def test_vision_chunked_equals_whole_batch(method, config):
    model = prune(_vit(), config)
    model.set_options(regroup=False)
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _same(*_whole_and_chunked(model, pixel_values=pixels))


def test_no_chunking_under_gradients(tiny_bert):
    model, ids, mask = _ltp_text(tiny_bert)
    rows = _record_decision_rows(model)
    with model.options(attention_chunk_bytes=1):
        model(input_ids=ids, attention_mask=mask)
    assert rows and all(r == ids.shape[0] for r in rows)
    ids1, mask1 = random_batch(batch=1, length=12, seed=2)
    with torch.inference_mode():
        model(input_ids=ids1, attention_mask=mask1)  # batch 1: one chunk, whatever the budget
