"""ToMe and EViT on the shared block runner: pure functions, parity when off, counts, FLOPs, configs."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trimformer.core.merging import (
    MergePlan,
    bipartite_soft_matching,
    evit_layers,
    fuse_inattentive,
    merge_tokens,
    proportional_attention_bias,
)
from trimformer.engine import BlockView, Decision, LayerHooks, MergeHook
from trimformer.engine.attention import attention_parts
from trimformer.engine.linears import Linears, WeightCache
from trimformer.methods import EViTConfig, EViTPolicy, ToMeConfig, ToMePolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import random_batch, tiny_bert, tiny_vision_model

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=4, num_labels=5)
TOKENS = (32 // 4) ** 2  # 64 patches


def _vit(**kw):
    return tiny_vision_model("vit", seed=None, **{**SMALL, **kw})


def _deit(**kw):
    return tiny_vision_model("deit", seed=None, **{**SMALL, **kw})


def _deit_teacher(**kw):
    return tiny_vision_model("deit_teacher", seed=None, **{**SMALL, **kw})


def _dinov2(**kw):
    return tiny_vision_model("dinov2", seed=None, **{**SMALL, **kw})


BUILDERS = {"vit": _vit, "deit": _deit, "deit_teacher": _deit_teacher, "dinov2": _dinov2}
PREFIX = {"vit": 1, "deit": 2, "deit_teacher": 2, "dinov2": 1}


def _pixels(batch=3, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _policies(num_layers=3):
    return {"tome": ToMePolicy(num_layers, ToMeConfig(r=9)), "evit": EViTPolicy(num_layers, EViTConfig(keep_rate=0.5))}


# ---- parity when switched off ----

@pytest.mark.parametrize("name", list(BUILDERS))
def test_tome_r0_and_evit_rate1_equal_dense(name):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    pixels = _pixels()
    ref = model(pixel_values=pixels).logits
    for policy in (ToMePolicy(3, ToMeConfig(r=0)), EViTPolicy(3, EViTConfig(keep_rate=1.0))):
        out = TokenPrunedModel(model, policy)(pixel_values=pixels)
        assert torch.allclose(out.logits, ref, atol=1e-5)
        assert torch.equal(out.n_out, out.n_in) and out.token_sizes is None
        assert torch.allclose(out.flops, out.dense_flops)


@pytest.mark.parametrize("base", ["vit", "dinov2"])
def test_base_models_equal_dense_when_off(base):
    torch.manual_seed(0)
    model = tiny_vision_model(base, seed=None, base=True, **SMALL)
    pixels = _pixels()
    ref = model(pixel_values=pixels).last_hidden_state
    out = TokenPrunedModel(model, ToMePolicy(3, ToMeConfig(r=0)))(pixel_values=pixels)
    assert torch.allclose(out.last_hidden_state, ref, atol=1e-5)


# ---- merging on real models ----

@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("method", ["tome", "evit"])
def test_merging_removes_tokens_keeps_prefix_and_sizes(name, method):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    pruned = TokenPrunedModel(model, _policies()[method], mode="packed")
    pixels = _pixels(batch=4)
    packed = pruned(pixel_values=pixels)
    total = TOKENS + PREFIX[name]
    # Really fewer tokens: the final packed width is the last layer's count.
    assert packed.token_sizes.shape == (4, int(packed.n_out[0, -1]))
    assert packed.token_sizes.shape[1] < total
    assert torch.equal(packed.token_sizes.sum(dim=1), torch.full((4,), float(total)))
    assert torch.all(packed.token_sizes[:, :PREFIX[name]] == 1)  # prefix tokens never absorbed anything
    assert torch.equal(packed.n_rows, packed.n_in)  # merging happens after the attention
    assert packed.flops_ratio < 0.9
    pruned.mode = "masked"
    masked = pruned(pixel_values=pixels)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-5)
    assert torch.equal(packed.n_out, masked.n_out)
    assert torch.allclose(packed.flops, masked.flops)


def test_tome_kept_counts_per_layer():
    torch.manual_seed(0)
    model = _deit(num_hidden_layers=6).eval()
    r = 20
    out = TokenPrunedModel(model, ToMePolicy(6, ToMeConfig(r=r)))(pixel_values=_pixels(batch=2))
    n = TOKENS + 2
    for layer in range(6):
        assert torch.all(out.n_in[:, layer] == n)
        n -= min(r, (n - 2) // 2)  # at most half of the mergeable tokens
        assert torch.all(out.n_out[:, layer] == n)


def test_evit_kept_counts_per_layer_default_layers():
    assert evit_layers(12) == [3, 6, 9]
    assert evit_layers(3) == [0, 1, 2]
    torch.manual_seed(0)
    model = _vit(num_hidden_layers=12).eval()
    rate = 0.7
    out = TokenPrunedModel(model, EViTPolicy(12, EViTConfig(keep_rate=rate)))(pixel_values=_pixels(batch=2))
    n = TOKENS + 1
    for layer in range(12):
        assert torch.all(out.n_in[:, layer] == n)
        if layer in (3, 6, 9):
            kept = math.ceil(rate * (n - 1))
            n = 1 + kept + (1 if kept < n - 1 else 0)  # [CLS] + top-k + the fused token
        assert torch.all(out.n_out[:, layer] == n)


def test_evit_custom_layers():
    torch.manual_seed(0)
    out = TokenPrunedModel(_vit().eval(), EViTPolicy(3, EViTConfig(keep_rate=0.25, layers=[1])))(
        pixel_values=_pixels(batch=2))
    assert torch.all(out.n_out[:, 0] == TOKENS + 1)
    assert torch.all(out.n_out[:, 1] == 1 + 16 + 1)
    assert torch.all(out.n_out[:, 2] == out.n_in[:, 2])


@pytest.mark.parametrize("method", ["tome", "evit", "dense"])
def test_flops_match_torch_flop_counter(method):
    torch.manual_seed(0)
    model = tiny_vision_model("vit", seed=None, base=True, pooler=False, **SMALL)  # the encoder alone
    pixels = _pixels(batch=2)
    policy = None if method == "dense" else _policies()[method]
    pruned = TokenPrunedModel(model, policy)
    with torch.no_grad():
        embed_counter = FlopCounterMode(display=False)
        with embed_counter:
            model.embeddings(pixels)
        counter = FlopCounterMode(display=False)
        # the counter sees neither the fused CPU attention kernel nor oneDNN's prepacked linears
        with counter, pruned.options(fused_attention=False, linear_kernel="torch"):
            out = pruned(pixel_values=pixels)
    counted = counter.get_total_flops() - embed_counter.get_total_flops()  # the encoder alone
    assert counted == int(out.flops.sum().item())
    if method != "dense":
        assert out.flops.sum() < out.dense_flops.sum()


def test_tome_on_padded_text_batch_matches_rows_alone():
    model = tiny_bert()
    ids, mask = random_batch(batch=4, length=20)
    for policy in (ToMePolicy(3, ToMeConfig(r=3)), EViTPolicy(3, EViTConfig(keep_rate=0.5))):
        pruned = TokenPrunedModel(model, policy)
        batched = pruned(ids, mask)
        assert torch.equal(batched.token_sizes.sum(dim=1), mask.sum(dim=1).float())
        for row in range(4):
            length = int(mask[row].sum())
            alone = pruned(ids[row:row + 1, :length], mask[row:row + 1, :length])
            assert torch.allclose(alone.logits, batched.logits[row:row + 1], atol=1e-5)
            assert torch.equal(alone.n_out, batched.n_out[row:row + 1])
        pruned.mode = "masked"
        assert torch.allclose(pruned(ids, mask).logits, batched.logits, atol=1e-5)


def test_block_refuses_decision_and_merge_together():
    torch.manual_seed(0)
    model = _vit().eval()
    pruned = TokenPrunedModel(model, None)
    block: BlockView = pruned.adapter.blocks(model)[0]
    assert block.num_heads == 4
    with pytest.raises(ValueError, match="either a pruning decision or a merge"):
        LayerHooks(Decision(lambda p, a: a), MergeHook(lambda s: None))


# ---- pure functions ----

def _similar_pair_metric():
    g = torch.Generator().manual_seed(0)
    metric, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))  # orthonormal rows: no two alike
    metric = metric[:7].clone()
    metric[4] = metric[3] + 0.01 * metric[6]  # tokens 3 and 4 nearly identical
    metric[0] = metric[2]  # [CLS] identical to token 2, but prefix tokens are never merged
    return metric[None]  # [1, 7, 8]


def test_bipartite_matching_merges_the_similar_pair_not_the_prefix():
    metric = _similar_pair_metric()
    alive = torch.ones(1, 7, dtype=torch.bool)
    # Default (official): A = 0, 2, 4, 6 and B = 1, 3, 5 over all tokens; 4 (A) goes into 3 (B), and the
    # survivors move to the first slots as [CLS], unmerged A (2, 6), B (1, 3, 5).
    plan = bipartite_soft_matching(metric, 1, alive, num_prefix=1)
    assert plan.keep.tolist() == [[True, True, True, True, True, True, False]]
    assert plan.source.tolist() == [[0, 2, 6, 1, 3, 5, 6]]
    assert plan.into.tolist() == [[0, 3, 1, 4, 4, 5, 2]]
    # split='mergeable', order='slots': A = 1, 3, 5 and B = 2, 4, 6 over the non-prefix tokens; 3 (A) goes
    # into 4 (B) and every survivor stays in its slot.
    plan = bipartite_soft_matching(metric, 1, alive, num_prefix=1, split="mergeable", order="slots")
    assert plan.keep.tolist() == [[True, True, True, False, True, True, True]]
    assert plan.into.tolist() == [[0, 1, 2, 4, 4, 5, 6]] and plan.source is None
    for kw in ({}, {"split": "mergeable", "order": "slots"}):
        # r larger than half the mergeable tokens is capped; the prefix stays where it is.
        plan = bipartite_soft_matching(metric, 10, alive, num_prefix=1, **kw)
        assert int(plan.keep.sum()) == 7 - 3 and bool(plan.keep[0, 0]) and plan.into[0, 0] == 0
        assert not bool((plan.into[0, 1:] == 0).any())
        plan = bipartite_soft_matching(metric, 10, alive, num_prefix=2, **kw)
        assert plan.into[0, :2].tolist() == [0, 1] and not bool((plan.into[0, 2:] < 2).any())
    # Official order with a distillation token (B's first token): [CLS], dist, unmerged A, B.
    plan = bipartite_soft_matching(metric, 10, alive, num_prefix=2)
    assert plan.source[0, :5].tolist() == [0, 1, 2, 3, 5] and plan.into.tolist() == [[0, 1, 2, 3, 3, 4, 3]]


def test_merge_tokens_moves_survivors_bit_exact():
    x = torch.randn(1, 7, 3, generator=torch.Generator().manual_seed(3))
    sizes = torch.tensor([[1.0, 2.0, 1.0, 1.0, 3.0, 1.0, 1.0]])
    plan = bipartite_soft_matching(_similar_pair_metric(), 1, torch.ones(1, 7, dtype=torch.bool), 1, weight=sizes)
    merged, new_sizes = merge_tokens(x, sizes, plan)
    assert torch.equal(merged[0, [0, 1, 2, 3, 5]], x[0, [0, 2, 6, 1, 5]])  # moved, untouched
    assert torch.allclose(merged[0, 4], (1 * x[0, 3] + 3 * x[0, 4]) / 4)  # 3 absorbed 4, size-weighted
    assert new_sizes[0, :6].tolist() == [1.0, 1.0, 1.0, 2.0, 4.0, 1.0]


def test_bipartite_matching_leaves_dead_tokens_alone():
    metric = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(1))
    alive = torch.ones(2, 9, dtype=torch.bool)
    alive[1, 5:] = False
    plan = bipartite_soft_matching(metric, 3, alive, num_prefix=1)
    assert not bool((plan.keep & ~alive).any())
    assert torch.equal(plan.into[1, 5:], torch.arange(5, 9))  # dead tokens go nowhere
    assert not bool((plan.into[1, :5] >= 5).any())  # and nothing goes into them
    assert int(plan.keep[0].sum()) == 9 - 3 and int(plan.keep[1].sum()) == 5 - 2  # 4 mergeable -> at most 2


def test_size_weighted_average_and_sizes_sum():
    x = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [4.0, 8.0], [3.0, 3.0]]])  # [1, 4, 2]
    sizes = torch.tensor([[1.0, 1.0, 3.0, 2.0]])
    plan = MergePlan(keep=torch.tensor([[True, False, True, True]]), into=torch.tensor([[0, 2, 2, 3]]),
                     weight=sizes)
    merged, new_sizes = merge_tokens(x, sizes, plan)
    assert torch.allclose(merged[0, 2], (1 * x[0, 1] + 3 * x[0, 2]) / 4)
    assert torch.equal(merged[0, [0, 3]], x[0, [0, 3]])  # untouched tokens are exact
    assert new_sizes.tolist() == [[1.0, 0.0, 4.0, 2.0]]
    assert float((new_sizes * plan.keep).sum()) == float(sizes.sum())


_LINEARS = Linears("torch", WeightCache())


def attention_probs(block, h, alive):
    """Probabilities [B, H, N, N] and values of ``h`` without a key bias."""
    probs, _, v = attention_parts(block, h, alive, _LINEARS)
    return probs, v


def _one_block():
    torch.manual_seed(0)
    model = _vit().eval()
    return TokenPrunedModel(model, None).adapter.blocks(model)[0]


def test_proportional_attention_sizes_one_is_plain_attention():
    block = _one_block()
    h = torch.randn(2, 6, 32)
    alive = torch.ones(2, 6, dtype=torch.bool)
    plain, _ = attention_probs(block, h, alive)
    bias = proportional_attention_bias(torch.ones(2, 6), alive)
    assert torch.equal(bias, torch.zeros(2, 6))
    sized, _, _ = attention_parts(block, h, alive, _LINEARS, bias)
    assert torch.allclose(sized, plain, atol=1e-7)


def test_proportional_attention_counts_a_size_s_key_as_s_copies():
    block = _one_block()
    h = torch.randn(1, 4, 32)
    alive = torch.ones(1, 4, dtype=torch.bool)
    bias = proportional_attention_bias(torch.tensor([[1.0, 3.0, 1, 1]]), alive)
    sized, _, v = attention_parts(block, h, alive, _LINEARS, bias)
    copies = torch.cat([h[:, :2], h[:, 1:2], h[:, 1:2], h[:, 2:]], dim=1)  # token 1 three times
    probs, vc = attention_probs(block, copies, torch.ones(1, 6, dtype=torch.bool))
    out_sized = sized[:, :, [0, 2, 3]] @ v  # query rows of tokens 0, 2, 3
    out_copies = probs[:, :, [0, 4, 5]] @ vc
    assert torch.allclose(out_sized, out_copies, atol=1e-6)


def test_evit_fused_token_is_the_weighted_average():
    x = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(2))
    scores = torch.tensor([[0.5, 0.05, 0.2, 0.1, 0.12, 0.03]])  # [CLS], then patches
    alive = torch.ones(1, 6, dtype=torch.bool)
    plan = fuse_inattentive(scores, alive, num_prefix=1, keep_rate=0.4, fuse="average")  # keep ceil(2.0) = 2
    dropped = [1, 3, 5]
    assert plan.keep.tolist() == [[True, False, True, True, True, False]]  # 3 hosts the fused token
    merged, sizes = merge_tokens(x, torch.ones(1, 6), plan)
    w = scores[0, dropped]
    expected = (w[:, None] * x[0, dropped]).sum(0) / w.sum()
    assert torch.allclose(merged[0, 3], expected, atol=1e-6)
    assert torch.equal(merged[0, [0, 2, 4]], x[0, [0, 2, 4]])
    assert sizes[0, 3] == 3 and float((sizes * plan.keep).sum()) == 6
    summed, _ = merge_tokens(x, torch.ones(1, 6), fuse_inattentive(scores, alive, 1, 0.4, fuse="sum"))
    assert torch.allclose(summed[0, 3], (w[:, None] * x[0, dropped]).sum(0), atol=1e-6)
    assert torch.equal(summed[0, [0, 2, 4]], x[0, [0, 2, 4]])
    # Keeping everything fuses nothing.
    plan = fuse_inattentive(scores, alive, 1, 1.0)
    assert plan.keep.all() and torch.equal(plan.into, torch.arange(6)[None])


# ---- configs ----

def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="r .* must be >= 0"):
        ToMeConfig(r=-1)
    with pytest.raises(ValueError, match="must be an integer"):
        ToMeConfig(r=1.5)
    for rate in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match=r"keep_rate must be in \(0, 1\]"):
            EViTConfig(keep_rate=rate)
    with pytest.raises(ValueError, match="layers must be 0-indexed"):
        EViTConfig(layers=[-1, 2])
    with pytest.raises(ValueError, match="must not repeat"):
        EViTConfig(layers=[2, 2])
    with pytest.raises(ValueError, match="fuse must be"):
        EViTConfig(fuse="max")
    with pytest.raises(ValueError, match="split must be"):
        ToMeConfig(split="halves")
    with pytest.raises(ValueError, match="order must be"):
        ToMeConfig(order="sorted")
    with pytest.raises(ValueError, match=r"out of range for a model with 3 layers"):
        EViTPolicy(3, EViTConfig(layers=[1, 3]))


def test_configs_json_round_trip():
    for config in (ToMeConfig(), ToMeConfig(r=3, proportional_attention=False, split="mergeable", order="slots"),
                   EViTConfig(), EViTConfig(keep_rate=0.5, layers=[1, 4], fuse="average")):
        again = type(config).from_json(config.to_json())
        assert again == config
    with pytest.raises(ValueError, match="unknown option"):
        ToMeConfig.from_dict({"r": 2, "schedule": "decreasing"})
    assert ToMePolicy(12, ToMeConfig(r=4)).config() == ToMeConfig(r=4)
    assert EViTPolicy(12, EViTConfig()).layers == [3, 6, 9]


@pytest.mark.parametrize("mode", ["packed", "masked"])
def test_tome_official_order_keeps_each_token_at_its_original_position(mode):
    """With one block, the official survivor order and the slot order merge the same tokens; a base model's
    last_hidden_state (tokens back at their original positions) must then be the same for both."""
    torch.manual_seed(0)
    model = tiny_vision_model("vit", seed=None, base=True, pooler=False, **{**SMALL, "num_hidden_layers": 1})
    pixels = _pixels(batch=2)
    outs = []
    for order in ("official", "slots"):
        pruned = TokenPrunedModel(model.eval(), ToMePolicy(1, ToMeConfig(r=4, order=order)), mode=mode)
        with torch.no_grad():
            outs.append(pruned(pixel_values=pixels).last_hidden_state)
    assert (outs[0].abs().sum(-1) == 0).any()  # tokens were merged away
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
