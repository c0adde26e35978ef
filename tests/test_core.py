"""Pure functions: scoring, selection, packing, FLOPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trimformer.core.flops import dense_encoder_flops, encoder_flops, layer_macs
from trimformer.core.packing import pack, packing_index, unpack
from trimformer.core.scoring import ltp_importance
from trimformer.core.selection import (
    hard_threshold_mask,
    keep_counts_from_rate,
    protect_prefix,
    soft_threshold_mask,
    topk_mask,
)
from trimformer.testing import tiny_bert


def _probs(b, h, n, seed=0, key_mask=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, h, n, n, generator=g)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(logits, -1)


def test_ltp_importance_is_normalised_by_real_length():
    n_real, n_pad = 7, 16
    key = torch.zeros(1, n_pad, dtype=torch.bool)
    key[0, :n_real] = True
    probs = _probs(1, 3, n_pad, key_mask=key)
    scores = ltp_importance(probs, key)
    assert torch.allclose(scores[0, :n_real].sum(), torch.tensor(1.0), atol=1e-6)
    # The same sequence without padding gives the same scores: padding does not dilute them.
    alone = ltp_importance(probs[:, :, :n_real, :n_real] / probs[:, :, :n_real, :n_real].sum(-1, keepdim=True),
                           key[:, :n_real])
    assert torch.allclose(alone, scores[:, :n_real], atol=1e-6)
    assert torch.all(scores[0, n_real:] == 0)


def test_ltp_importance_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[B, H, Nq, Nk\]"):
        ltp_importance(torch.rand(2, 5, 5), torch.ones(2, 5, dtype=torch.bool))


def test_threshold_masks_and_prefix():
    scores = torch.tensor([[0.01, 0.5, 0.2, 0.05]])
    hard = protect_prefix(hard_threshold_mask(scores, 0.1), 1)
    assert hard.tolist() == [[True, True, True, False]]
    soft = soft_threshold_mask(scores, 0.1, 1e-3)
    assert soft[0, 1] > 0.99 and soft[0, 3] < 0.01
    assert protect_prefix(soft, 1)[0, 0] == 1.0
    # A larger temperature makes the mask softer.
    assert soft_threshold_mask(scores, 0.1, 0.1)[0, 3] > soft[0, 3]
    with pytest.raises(ValueError):
        soft_threshold_mask(scores, 0.1, 0.0)


def test_topk_keeps_requested_count_among_live_tokens():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.8], [0.2, 0.3, 0.9, 0.1, 0.0]])
    alive = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    keep = topk_mask(scores, alive, torch.tensor([2, 1]))
    assert keep.tolist() == [[True, False, False, True, False], [False, False, True, False, False]]
    counts = keep_counts_from_rate(alive, 0.5)
    assert counts.tolist() == [2, 2]


def test_pack_unpack_roundtrip_variable_counts():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    keep = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    packed, mask, index = pack(x, keep)
    assert packed.shape == (3, 5, 4)  # the widest row, no more
    assert mask.sum(1).tolist() == [3, 5, 1]
    assert torch.equal(packed[0, :3], x[0, [0, 2, 3]])  # original order kept
    back = unpack(packed, index, mask, 6)
    assert torch.equal(back, x * keep[..., None])


def test_packing_index_batch_one_fast_path_matches_general_path():
    torch.manual_seed(1)
    keep = torch.rand(3, 9) > 0.5
    keep[:, 0] = True
    for row in keep:
        index, mask = packing_index(row[None])
        kept = int(row.sum())
        assert index.tolist() == [row.nonzero().flatten().tolist()] and mask.shape == (1, kept) and mask.all()
        x = torch.randn(1, 9, 4)
        assert torch.equal(pack(x, row[None])[0], x[:, row])


def test_bool_prefix_protection_leaves_its_input_alone():
    mask = torch.zeros(2, 4, dtype=torch.bool)
    kept = protect_prefix(mask, 2)
    assert kept[:, :2].all() and not kept[:, 2:].any() and not mask.any()


def test_packing_index_all_dropped_but_prefix():
    keep = torch.zeros(2, 5, dtype=torch.bool)
    keep[:, 0] = True
    index, mask = packing_index(keep)
    assert index.shape == (2, 1) and mask.all()


def test_flops_formula_matches_ltp_paper_when_dense():
    d, n = 384, 100
    assert layer_macs(d, 4 * d, n, n) == 2 * d * n * n + 4 * d * d * n + 8 * d * d * n
    lengths = torch.tensor([10, 20])
    dense = dense_encoder_flops(d, 4 * d, 6, lengths)
    assert torch.allclose(dense, encoder_flops(d, 4 * d, lengths[:, None].expand(-1, 6).double(),
                                               lengths[:, None].expand(-1, 6).double()))


def test_flops_formula_matches_torch_flop_counter():
    model = tiny_bert(base=True, pooler=False)  # the encoder's FLOPs only
    cfg = model.config
    n = 17
    ids = torch.randint(5, 64, (1, n))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=ids)
    counted = counter.get_total_flops()
    analytic = dense_encoder_flops(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                                   torch.tensor([n]))
    assert counted == int(analytic.item())


def test_head_weighted_class_attention_matches_definition():
    from trimformer.core.scoring import head_weighted_class_attention

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 5, 5, generator=g), -1)
    values = torch.randn(2, 3, 5, 4, generator=g)
    scores = head_weighted_class_attention(probs, values)
    for b in range(2):
        for i in range(5):
            norms = torch.stack([(probs[b, h] @ values[b, h])[i].norm() for h in range(3)])
            expected = sum(norms[h] / norms.sum() * probs[b, h, 0, i] for h in range(3))
            assert torch.allclose(scores[b, i], expected, atol=1e-6)
    # Equal heads reduce it to plain class attention.
    same = probs[:, :1].expand(-1, 3, -1, -1)
    same_v = values[:, :1].expand(-1, 3, -1, -1)
    assert torch.allclose(head_weighted_class_attention(same, same_v), same[:, 0, 0], atol=1e-6)
