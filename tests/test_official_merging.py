"""ToMe and EViT match their official code by default: checked against small reference implementations.

The references below restate the official rules (facebookresearch/ToMe ``merge.py``, youweiliang/evit
``evit.py``) on unpadded tokens, one row at a time where rows differ; they are written for these tests.
ToMe: the A/B split alternates over all tokens ([CLS] at 0 falls in A and its row is barred; a distillation
token at 1 falls in B and its column is barred), the r best-matched A tokens merge into their B match
(size-weighted), survivors are ordered [unmerged A, B] (the distillation token kept second), r is capped at
half the non-prefix tokens, proportional attention adds log(size) to the logits. EViT: the fused token is
the sum of the inattentive tokens weighted by their class attention (not renormalised).
"""

import math

import pytest
import torch
from transformers import ViTForImageClassification

from trimformer.core.merging import bipartite_soft_matching, fuse_inattentive, merge_tokens
from trimformer.methods import EViTConfig, EViTPolicy, ToMeConfig, ToMePolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.testing import tiny_vision_model

# ---- references ----


def official_tome_step(x, size, metric, r, num_prefix):
    """One official ToMe merge on unpadded tokens x [B, T, D], size [B, T], metric [B, T, C].

    Returns (x [B, T', D], size [B, T'], order [B, T'], pairs): ``order`` is the input index of each
    survivor in the output order; ``pairs`` per row the set of (merged token, its destination).
    """
    batch, t, dim = x.shape
    r = min(r, (t - num_prefix) // 2)
    if r <= 0:
        return x, size, torch.arange(t).expand(batch, t), [set() for _ in range(batch)]
    unit = metric / metric.norm(dim=-1, keepdim=True)
    even, odd = torch.arange(0, t, 2), torch.arange(1, t, 2)  # sets A and B, as input indices
    sim = unit[:, even] @ unit[:, odd].transpose(1, 2)  # [B, |A|, |B|]
    if num_prefix >= 1:
        sim[:, 0, :] = float("-inf")
    if num_prefix >= 2:
        sim[:, :, 0] = float("-inf")
    best, match = sim.max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True, stable=True)
    src, unmerged = ranked[:, :r], ranked[:, r:].sort(dim=-1).values  # positions within A
    dst = match.gather(1, src)  # positions within B
    pairs = [set(zip(even[src[b]].tolist(), odd[dst[b]].tolist(), strict=True)) for b in range(batch)]

    def rows(t2, idx):
        return t2.gather(1, idx) if t2.dim() == 2 else t2.gather(1, idx[..., None].expand(-1, -1, dim))

    weighted = x * size[..., None]
    xa, xb, sa, sb = weighted[:, even], weighted[:, odd], size[:, even], size[:, odd]
    xb = xb.scatter_add(1, dst[..., None].expand(-1, -1, dim), rows(xa, src))
    sb = sb.scatter_add(1, dst, rows(sa, src))
    xu, su, iu, ib = rows(xa, unmerged), rows(sa, unmerged), even[unmerged], odd.expand(batch, -1)

    def cat(u, v):
        if num_prefix >= 2:  # [CLS], distillation token, the other unmerged A, the other B
            return torch.cat([u[:, :1], v[:, :1], u[:, 1:], v[:, 1:]], dim=1)
        return torch.cat([u, v], dim=1)

    new_size = cat(su, sb)
    return cat(xu, xb) / new_size[..., None], new_size, cat(iu, ib), pairs


def official_tome_vit(model, pixels, r):
    """A whole HF ViT classifier under the official ToMe (proportional attention on): logits [B, C]."""
    vit = model.vit
    x = vit.embeddings(pixels)
    size = torch.ones(x.shape[:2], dtype=x.dtype)
    for layer in vit.layers:
        att = layer.attention
        h = layer.layernorm_before(x)
        batch, heads, dh = x.shape[0], att.num_attention_heads, att.head_dim
        q, k, v = (p(h).view(batch, -1, heads, dh).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj))
        logits = (q @ k.transpose(-1, -2)) * att.scaling + size.log()[:, None, None, :]
        context = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, -1, heads * dh)
        x = x + att.o_proj(context)
        x, size, _, _ = official_tome_step(x, size, k.mean(dim=1), r, 1)
        x = x + layer.mlp(layer.layernorm_after(x))
    return model.classifier(vit.layernorm(x)[:, 0])


def official_evit_fuse(x, scores, keep_rate):
    """Official EViT on unpadded x [B, N, D] ([CLS] first), scores [B, N] (class attention).

    Returns (kept input indices [B, k], fused token [B, D]), or (None, None) when nothing is dropped.
    """
    n = x.shape[1] - 1
    left = math.ceil(keep_rate * n)
    if left == n:
        return None, None
    cls_attn = scores[:, 1:]
    top = torch.topk(cls_attn, left, dim=1).indices
    inattentive = torch.ones_like(cls_attn).scatter_(1, top, 0.0)
    return top + 1, (x[:, 1:] * (cls_attn * inattentive)[..., None]).sum(dim=1)


def official_evit_vit(model, pixels, keep_rate, layers):
    """A whole HF ViT classifier under the official EViT (fused token appended after the kept ones)."""
    vit = model.vit
    x = vit.embeddings(pixels)
    for i, layer in enumerate(vit.layers):
        att = layer.attention
        h = layer.layernorm_before(x)
        batch, heads, dh = x.shape[0], att.num_attention_heads, att.head_dim
        q, k, v = (p(h).view(batch, -1, heads, dh).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj))
        probs = ((q @ k.transpose(-1, -2)) * att.scaling).softmax(dim=-1)
        x = x + att.o_proj((probs @ v).transpose(1, 2).reshape(batch, -1, heads * dh))
        if i in layers:
            kept, fused = official_evit_fuse(x, probs[:, :, 0, :].mean(dim=1), keep_rate)
            if kept is not None:
                x = torch.cat([x[:, :1], x.gather(1, kept[..., None].expand(-1, -1, x.shape[-1])), fused[:, None]], 1)
        x = x + layer.mlp(layer.layernorm_after(x))
    return model.classifier(vit.layernorm(x)[:, 0])


# ---- helpers ----


def _alive(batch, n, num_prefix, padding, gen):
    """bool [B, N]: all live, right padding (row 0 full), or dead slots scattered (prefix always live)."""
    alive = torch.ones(batch, n, dtype=torch.bool)
    if padding == "right":
        lengths = torch.randint(num_prefix + 1, n + 1, (batch,), generator=gen)
        lengths[0] = n
        alive = torch.arange(n)[None, :] < lengths[:, None]
    elif padding == "scattered":
        alive = torch.rand(batch, n, generator=gen) > 0.3
        alive[:, :num_prefix] = True
    return alive


def _plan_pairs_and_order(plan, alive):
    """Per row: the set of (merged slot, destination slot) in input slots, and the kept inputs in slot order."""
    source = plan.source if plan.source is not None else torch.arange(alive.shape[1]).expand_as(alive)
    dest = source.gather(1, plan.into)  # input slot of the token each token went into
    pairs, orders = [], []
    for b in range(alive.shape[0]):
        pairs.append({(i, int(dest[b, i])) for i in range(alive.shape[1]) if alive[b, i] and int(dest[b, i]) != i})
        orders.append(source[b][plan.keep[b]].tolist())
    return pairs, orders


def _reference_rows(metric, alive, r, num_prefix):
    """The official merge of each row alone (its live tokens, in order), in input slots."""
    pairs, orders = [], []
    for b in range(metric.shape[0]):
        live = alive[b].nonzero().flatten()
        m = metric[b:b + 1, live]
        _, _, order, row_pairs = official_tome_step(m, torch.ones(1, len(live)), m, r, num_prefix)
        pairs.append({(int(live[i]), int(live[j])) for i, j in row_pairs[0]})
        orders.append(live[order[0]].tolist())
    return pairs, orders


def _vit(layers=3, image=32, seed=0) -> ViTForImageClassification:
    return tiny_vision_model("vit", seed=seed, num_hidden_layers=layers, image_size=image, patch_size=4)


def _pixels(batch, image=32, seed=1):
    return torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(seed))


# ---- ToMe ----


@pytest.mark.parametrize("padding", ["none", "right", "scattered"])
@pytest.mark.parametrize("num_prefix", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_tome_default_merges_the_official_pairs_in_the_official_order(batch, num_prefix, padding):
    gen = torch.Generator().manual_seed(batch * 10 + num_prefix)
    total = 0
    for n in (6, 17, 50, 197):
        alive = _alive(batch, n, num_prefix, padding, gen)
        metric = torch.randn(batch, n, 16, generator=gen)
        for r in (1, 4, 8, 100):
            plan = bipartite_soft_matching(metric, r, alive, num_prefix)
            pairs, orders = _plan_pairs_and_order(plan, alive)
            ref_pairs, ref_orders = _reference_rows(metric, alive, r, num_prefix)
            assert pairs == ref_pairs  # 100% agreement on which token merges into which
            assert orders == ref_orders  # and the survivors in the official order
            assert not bool((plan.keep & ~alive).any())  # dead slots never hold a survivor
            dead = ~alive
            assert torch.equal(plan.into[dead], torch.arange(n).expand(batch, n)[dead])  # and stay put
            total += sum(len(p) for p in ref_pairs)
    assert total > 0


def test_tome_default_merged_tokens_are_the_official_size_weighted_averages():
    gen = torch.Generator().manual_seed(5)
    for batch, n, r in ((1, 17, 4), (4, 50, 8), (3, 65, 100)):
        x = torch.randn(batch, n, 8, generator=gen)
        sizes = torch.randint(1, 5, (batch, n), generator=gen).float()
        metric = torch.randn(batch, n, 16, generator=gen)
        alive = torch.ones(batch, n, dtype=torch.bool)
        plan = bipartite_soft_matching(metric, r, alive, 1, weight=sizes)
        merged, new_sizes = merge_tokens(x, sizes, plan)
        ref_x, ref_sizes, _, _ = official_tome_step(x, sizes, metric, r, 1)
        kept = plan.keep[0].sum()
        assert bool((plan.keep.sum(dim=1) == kept).all())  # no padding: every row keeps as many
        assert torch.allclose(merged[plan.keep].view(batch, -1, 8), ref_x, atol=1e-6)
        assert torch.equal(new_sizes[plan.keep].view(batch, -1), ref_sizes)


@pytest.mark.parametrize("mode", ["packed", "masked"])
@pytest.mark.parametrize("layers,image,r", [(3, 32, 8), (12, 32, 4), (12, 56, 8)])
def test_tome_default_model_matches_the_official_model(layers, image, r, mode):
    model = _vit(layers, image)
    for batch in (1, 4):
        pixels = _pixels(batch, image)
        with torch.no_grad():
            ref = official_tome_vit(model, pixels, r)
            out = TokenPrunedModel(model, ToMePolicy(layers, ToMeConfig(r=r)), mode=mode)(pixel_values=pixels)
        assert torch.allclose(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_tome_split_and_order_each_change_the_result():
    gen = torch.Generator().manual_seed(7)
    metric = torch.randn(2, 17, 16, generator=gen)
    alive = torch.ones(2, 17, dtype=torch.bool)
    official = _plan_pairs_and_order(bipartite_soft_matching(metric, 4, alive, 1), alive)
    mergeable = _plan_pairs_and_order(bipartite_soft_matching(metric, 4, alive, 1, split="mergeable"), alive)
    assert mergeable[0] != official[0]  # other pairs merge
    slots = bipartite_soft_matching(metric, 4, alive, 1, order="slots")
    assert slots.source is None
    in_slots = _plan_pairs_and_order(slots, alive)
    assert in_slots[0] == official[0] and in_slots[1] != official[1]  # same pairs, survivors not reordered
    # Over a whole model the order decides later layers' splits: the logits move away from the official ones.
    model, pixels = _vit(12), _pixels(4)
    with torch.no_grad():
        ref = official_tome_vit(model, pixels, 4)
        for kw in ({"split": "mergeable"}, {"order": "slots"}):
            out = TokenPrunedModel(model, ToMePolicy(12, ToMeConfig(r=4, **kw)))(pixel_values=pixels)
            assert not torch.allclose(out.logits, ref, atol=1e-3)


# ---- EViT ----


@pytest.mark.parametrize("padding", ["none", "right", "scattered"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_evit_default_fused_token_is_the_official_one(batch, padding):
    gen = torch.Generator().manual_seed(batch)
    for n, rate in ((6, 0.5), (17, 0.7), (65, 0.3), (50, 1.0)):
        alive = _alive(batch, n, 1, padding, gen)
        x = torch.randn(batch, n, 8, generator=gen)
        scores = torch.rand(batch, n, generator=gen).masked_fill(~alive, 0.0)
        scores = scores / scores.sum(dim=1, keepdim=True)  # a class-attention row
        plan = fuse_inattentive(scores, alive, 1, rate)
        merged, sizes = merge_tokens(x, torch.ones(batch, n), plan)
        for b in range(batch):
            live = alive[b].nonzero().flatten()
            kept, fused = official_evit_fuse(x[b:b + 1, live], scores[b:b + 1, live], rate)
            if kept is None:  # nothing dropped, nothing fused
                assert torch.equal(plan.keep[b], alive[b]) and torch.equal(plan.into[b], torch.arange(n))
                continue
            kept_slots = set(live[kept[0]].tolist())
            survivors = set(plan.keep[b].nonzero().flatten().tolist())
            (host,) = survivors - kept_slots - {0}  # the slot that holds the fused token
            assert torch.allclose(merged[b, host], fused[0], atol=1e-6)
            assert sizes[b, host] == len(live) - 1 - len(kept_slots)  # it stands for every dropped token


def test_evit_default_model_matches_the_official_model():
    model = _vit(3)
    for batch in (1, 4):
        pixels = _pixels(batch)
        with torch.no_grad():
            ref = official_evit_vit(model, pixels, 0.5, [0, 1, 2])
            out = TokenPrunedModel(model, EViTPolicy(3, EViTConfig(keep_rate=0.5)))(pixel_values=pixels)
        assert torch.allclose(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_evit_fuse_average_changes_the_result():
    gen = torch.Generator().manual_seed(11)
    x, scores = torch.randn(2, 17, 8, generator=gen), torch.rand(2, 17, generator=gen)
    alive = torch.ones(2, 17, dtype=torch.bool)
    summed, _ = merge_tokens(x, torch.ones(2, 17), fuse_inattentive(scores, alive, 1, 0.5))
    averaged, _ = merge_tokens(x, torch.ones(2, 17), fuse_inattentive(scores, alive, 1, 0.5, fuse="average"))
    assert not torch.allclose(summed, averaged, atol=1e-3)
    model, pixels = _vit(3), _pixels(2)
    with torch.no_grad():
        ref = official_evit_vit(model, pixels, 0.5, [0, 1, 2])
        out = TokenPrunedModel(model, EViTPolicy(3, EViTConfig(keep_rate=0.5, fuse="average")))(pixel_values=pixels)
    assert not torch.allclose(out.logits, ref, atol=1e-3)


# ---- configs ----


def test_defaults_are_official_and_survive_json():
    assert (ToMeConfig().split, ToMeConfig().order, EViTConfig().fuse) == ("official", "official", "sum")
    for config in (ToMeConfig(), ToMeConfig(split="mergeable"), ToMeConfig(order="slots"),
                   ToMeConfig(r=2, split="mergeable", order="slots"), EViTConfig(), EViTConfig(fuse="average")):
        text = config.to_json()
        again = type(config).from_json(text)
        assert again == config
        for field in ("split", "order") if isinstance(config, ToMeConfig) else ("fuse",):
            assert f'"{field}": "{getattr(config, field)}"' in text
    assert ToMePolicy(12, ToMeConfig(order="slots")).config().order == "slots"


def test_tome_config_saved_before_split_and_order_keeps_its_behaviour():
    from trimformer.methods import ToMeConfig

    old = ToMeConfig.from_dict({"r": 4, "proportional_attention": True})  # as saved before the two options
    assert (old.split, old.order) == ("mergeable", "slots")
    assert ToMeConfig.from_dict(ToMeConfig(r=4).to_dict()) == ToMeConfig(r=4)  # new configs round-trip
