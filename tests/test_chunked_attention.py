"""Row-chunked attention in deciding blocks (inference): the same results as the whole batch at once."""

import pytest
import torch
from conftest import random_batch
from test_regroup import _ltp_text, _vit

import trimformer.blocks as block_ops
from trimformer.methods import ASViTConfig, SaiTConfig
from trimformer.vision_pipeline import build_vision_method


def _whole_and_chunked(model, monkeypatch, calls: list, **inputs):
    """Outputs with the default chunk budget (these tiny batches fit in one chunk) and with one row per chunk."""
    real = block_ops.decide_and_mix

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(kwargs.get("chunked", args[6] if len(args) > 6 else False))
        return out

    monkeypatch.setattr(block_ops, "decide_and_mix", counting)
    whole = model(**inputs)
    monkeypatch.setattr(block_ops, "ATTENTION_CHUNK_BYTES", 1)  # one row per chunk
    return whole, model(**inputs)


def _same(whole, chunked):
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=1e-5, atol=1e-5)
    for key in ("n_in", "n_out", "flops"):
        assert torch.equal(getattr(chunked, key), getattr(whole, key)), key


def test_chunk_rows_respect_the_budget(monkeypatch):
    assert block_ops._chunk_rows(32, 12, 128, 4) == 2  # 768 kB per row under 2 MiB
    assert block_ops._chunk_rows(32, 12, 512, 4) == 1  # a row over budget still runs alone
    assert block_ops._chunk_rows(3, 1, 8, 4) == 3  # a small batch is one chunk
    monkeypatch.setattr(block_ops, "ATTENTION_CHUNK_BYTES", 0)
    assert block_ops._chunk_rows(5, 2, 8, 4) == 1


@pytest.mark.parametrize("mode", ["packed", "masked"])
@torch.inference_mode()
def test_ltp_chunked_equals_whole_batch(tiny_bert, monkeypatch, mode):
    model, ids, mask = _ltp_text(tiny_bert)
    model.mode, model.regroup = mode, False
    calls: list = []
    whole, chunked = _whole_and_chunked(model, monkeypatch, calls, input_ids=ids, attention_mask=mask)
    assert calls and all(calls), "deciding blocks did not run chunked in inference"
    _same(whole, chunked)
    assert (whole.n_out[:, -1] < mask.sum(1)).any()  # something was pruned


@pytest.mark.parametrize("method,config", [("sait", SaiTConfig(policy="mass", stages=(1, 2), default_level=0.6)),
                                           ("sait", SaiTConfig(policy="topk", default_level=0.5)),
                                           ("asvit", ASViTConfig(target_flops=0.6))])
@torch.inference_mode()
def test_vision_chunked_equals_whole_batch(method, config, monkeypatch):
    model = build_vision_method(_vit(), method, config)
    model.regroup = False
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole, chunked = _whole_and_chunked(model, monkeypatch, [], pixel_values=pixels)
    _same(whole, chunked)


def test_no_chunking_under_gradients(tiny_bert, monkeypatch):
    model, ids, mask = _ltp_text(tiny_bert)
    calls: list = []
    _whole_and_chunked(model, monkeypatch, calls, input_ids=ids, attention_mask=mask)
    assert calls and not any(calls)
    ids1, mask1 = random_batch(batch=1, length=12, seed=2)
    with torch.inference_mode():
        model(input_ids=ids1, attention_mask=mask1)  # batch 1: one chunk, whatever the budget
