"""Every field of every pruning config (token pruning, and structured pruning's AdaPrunerConfig) changes behaviour:
a knob that silently does nothing fails here.

Each test is registered against the config field it proves with ``@knob(Config, "field")``, and
``test_every_field_has_a_knob_test`` compares the registered fields with ``dataclasses.fields(Config)``: a new field
without a test fails the suite. Forward fields are shown on a model pruned with ``trimformer.prune`` (kept counts,
logits, FLOPs); training-recipe fields by running the real recipe (``trimformer.fit``) for a few steps on a tiny model,
the default arm against the changed one, seeded so that the knob is the only difference (the recipes' determinism is
tested below). Step counts are compared between two small values (the defaults' hundreds of steps are too slow here).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset
from transformers import ViTForImageClassification

import trimformer
from trimformer import (
    AdaPrunerConfig,
    ASViTConfig,
    EViTConfig,
    HeadPruningConfig,
    LTPConfig,
    SaiTConfig,
    ToMeConfig,
    TopKConfig,
)
from trimformer.structured import BudgetError
from trimformer.structured.adapruner import adaprune, choose_widths, inherit, sparse_train_
from trimformer.structured.train import batchnorm_l1
from trimformer.testing import (
    make_tokenizer,
    random_batch,
    synthetic_text_data,
    tiny_bert,
    tiny_cnn,
    tiny_image_data,
    tiny_vision_model,
)

CONFIGS = (LTPConfig, TopKConfig, SaiTConfig, ASViTConfig, EViTConfig, ToMeConfig, HeadPruningConfig, AdaPrunerConfig)
KNOBS: dict[type, set[str]] = {cls: set() for cls in CONFIGS}
_DEFAULT = object()


def knob(cls: type, name: str):
    """Register the decorated test as the proof that ``cls.name`` changes behaviour."""

    def register(test):
        KNOBS[cls].add(name)
        return test

    return register


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_knob_test(cls):
    assert KNOBS[cls] == {f.name for f in dataclasses.fields(cls)}


def arms(cls: type, name: str, value: Any, baseline: Any = _DEFAULT, **common: Any) -> tuple[Any, Any]:
    """(config at ``baseline`` — the field's default unless given —, config with ``name=value``), all else equal."""
    assert name in {f.name for f in dataclasses.fields(cls)} and name not in common
    first = cls(**common) if baseline is _DEFAULT else cls(**common, **{name: baseline})
    second = cls(**common, **{name: value})
    assert getattr(first, name) != getattr(second, name), f"{cls.__name__}.{name}: both arms hold {value!r}"
    for f in dataclasses.fields(cls):
        if f.name != name:
            assert getattr(first, f.name) == getattr(second, f.name), f"{f.name} differs too"
    return first, second


# ---------------------------------------------------------------- tiny seeded models, inputs, recipes
# tiny_bert: trimformer.testing's (3 blocks, hidden 32, 3 labels, eager attention)


def tiny_vit(seed: int = 0, sharpen: float = 4.0) -> ViTForImageClassification:
    """A 4-block ViT on 32x32 images (64 patches + [CLS]) whose attention is peaked like a trained one's
    (random initialisation attends almost uniformly, which hides the choice of tokens)."""
    model = tiny_vision_model("vit", seed=seed, patch_size=4)
    with torch.no_grad():  # query and key projections, as transformers names them (old and new layouts)
        names = ("query", "key", "q_proj", "k_proj")
        scaled = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in names]
        assert len(scaled) == 2 * 4
        for module in scaled:
            module.weight.mul_(sharpen)
    return model


def pixels(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def image_data(n: int = 32, seed: int = 0) -> TensorDataset:
    return TensorDataset(pixels(n, seed), torch.arange(n) % 5)


@torch.no_grad()
def bert_forward(config: Any):
    ids, mask = random_batch()
    return trimformer.prune(tiny_bert(), config)(input_ids=ids, attention_mask=mask)


@torch.no_grad()
def vit_forward(config: Any):
    return trimformer.prune(tiny_vit(), config)(pixel_values=pixels())


def fit_text(config: Any) -> tuple[trimformer.TokenPrunedModel, dict]:
    pruned = trimformer.prune(tiny_bert(), config)
    train = trimformer.TrainConfig(batch_size=8, lr=1e-3, max_length=32)
    history = trimformer.fit(pruned, synthetic_text_data(32), train, tokenizer=make_tokenizer())
    return pruned, history


def fit_images(config: Any) -> tuple[trimformer.TokenPrunedModel, dict]:
    pruned = trimformer.prune(tiny_vit(), config)
    history = trimformer.fit(pruned, image_data(), trimformer.TrainConfig(batch_size=8, lr=1e-3))
    return pruned, history


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the recipes are deterministic (the baseline)


@pytest.mark.parametrize("config", [LTPConfig(target_flops=None, temperature=0.05, soft_steps=1, hard_steps=1),
                                    TopKConfig(calibration_batches=1, hard_steps=1)], ids=["ltp", "topk"])
def test_text_recipes_are_deterministic(config):
    (a, ha), (b, hb) = fit_text(config), fit_text(config)
    assert ha == hb and same_weights(a, b)


@pytest.mark.parametrize("config", [SaiTConfig(steps=2), ASViTConfig(steps=2, calibration_batches=1)],
                         ids=["sait", "asvit"])
def test_vision_recipes_are_deterministic(config):
    (a, ha), (b, hb) = fit_images(config), fit_images(config)
    assert ha == hb and same_weights(a, b)


# ---------------------------------------------------------------- LTP


@knob(LTPConfig, "final_threshold")
def test_ltp_final_threshold():
    default, changed = (bert_forward(c) for c in arms(LTPConfig, "final_threshold", 0.2))
    assert changed.n_out.sum() < default.n_out.sum()
    assert changed.flops.sum() < default.flops.sum()


@knob(LTPConfig, "temperature")
@torch.no_grad()
def test_ltp_temperature_shapes_the_soft_masks():
    ids, mask = random_batch()
    outs = []
    for config in arms(LTPConfig, "temperature", 0.05):
        pruned = trimformer.prune(tiny_bert(), config)
        pruned.policy.stage = "soft"
        pruned.mode = "masked"
        outs.append(pruned(input_ids=ids, attention_mask=mask))
    default, changed = outs
    assert not close(default.n_out, changed.n_out)  # expected kept counts of the soft masks
    assert not close(default.logits, changed.logits)


_LTP_SOFT = dict(target_flops=None, temperature=0.05, hard_steps=0)  # soft stage only, gradients not saturated


@knob(LTPConfig, "lambda_")
def test_ltp_lambda_weighs_the_mask_regulariser():
    (a, ha), (b, hb) = (fit_text(c) for c in arms(LTPConfig, "lambda_", 10.0, soft_steps=2, **_LTP_SOFT))
    assert ha["thresholds"] != hb["thresholds"] and not same_weights(a, b)


@knob(LTPConfig, "target_flops")
def test_ltp_target_flops_sets_the_calibration():
    (a, ha), (b, hb) = (fit_text(c) for c in arms(LTPConfig, "target_flops", 0.3, soft_steps=0, hard_steps=0))
    assert hb["initial_scale"] > ha["initial_scale"] and hb["initial_ratio"] < ha["initial_ratio"]
    assert hb["thresholds"] != ha["thresholds"]


@knob(LTPConfig, "budget_weight")
def test_ltp_budget_weight_weighs_the_flops_loss():
    configs = arms(LTPConfig, "budget_weight", 50.0, temperature=0.05, soft_steps=2, hard_steps=0)
    (a, ha), (b, hb) = (fit_text(c) for c in configs)
    assert ha["initial_scale"] == hb["initial_scale"]  # same start, then the soft stage differs
    assert ha["soft"][0]["ce"] == hb["soft"][0]["ce"] and ha["soft"][0]["loss"] < hb["soft"][0]["loss"]
    assert ha["soft"][1]["ce"] != hb["soft"][1]["ce"]  # the first step moved the weights differently
    # (the thresholds' first Adam steps have the same sign in both arms, and their lr is tiny: compare the weights)
    assert not same_weights(a, b)


@knob(LTPConfig, "soft_steps")
def test_ltp_soft_steps():
    (a, ha), (b, hb) = (fit_text(c) for c in arms(LTPConfig, "soft_steps", 2, baseline=1, **_LTP_SOFT))
    assert (len(ha["soft"]), len(hb["soft"])) == (1, 2) and not same_weights(a, b)


@knob(LTPConfig, "hard_steps")
def test_ltp_hard_steps():
    configs = arms(LTPConfig, "hard_steps", 2, baseline=1, target_flops=None, soft_steps=0)
    (a, ha), (b, hb) = (fit_text(c) for c in configs)
    assert (len(ha["hard"]), len(hb["hard"])) == (1, 2) and not same_weights(a, b)


@knob(LTPConfig, "threshold_lr")
def test_ltp_threshold_lr():
    (a, ha), (b, hb) = (fit_text(c) for c in arms(LTPConfig, "threshold_lr", 1e-2, soft_steps=2, **_LTP_SOFT))
    assert max(abs(x - y) for x, y in zip(ha["thresholds"], hb["thresholds"], strict=True)) > 1e-3
    assert not same_weights(a, b)


@knob(LTPConfig, "calibration_batches")
def test_ltp_calibration_batches():
    configs = arms(LTPConfig, "calibration_batches", 1, soft_steps=0, hard_steps=0)
    ha, hb = (fit_text(c)[1] for c in configs)  # batches of 8: 8 batches sample all 32 texts, 1 batch 8 of them
    assert (ha["initial_scale"], ha["initial_ratio"]) != (hb["initial_scale"], hb["initial_ratio"])


# ---------------------------------------------------------------- top-k


@knob(TopKConfig, "final_keep_rate")
def test_topk_final_keep_rate():
    default, changed = (bert_forward(c) for c in arms(TopKConfig, "final_keep_rate", 0.2))
    assert changed.n_out.sum() < default.n_out.sum()
    assert changed.flops.sum() < default.flops.sum()


@knob(TopKConfig, "score")
def test_topk_score():
    default, changed = (bert_forward(c) for c in arms(TopKConfig, "score", "cls_attention"))
    assert torch.equal(default.n_out, changed.n_out)  # same counts, other tokens
    assert not close(default.logits, changed.logits)


@knob(TopKConfig, "target_flops")
def test_topk_target_flops_sets_the_calibration():
    (a, ha), (b, hb) = (fit_text(c) for c in arms(TopKConfig, "target_flops", 0.8, hard_steps=0, calibration_batches=1))
    assert hb["final_keep_rate"] > ha["final_keep_rate"] and hb["calibrated_ratio"] > ha["calibrated_ratio"]
    ids, mask = random_batch()
    with torch.no_grad():
        assert b(input_ids=ids, attention_mask=mask).n_out.sum() > a(input_ids=ids, attention_mask=mask).n_out.sum()


@knob(TopKConfig, "hard_steps")
def test_topk_hard_steps():
    configs = arms(TopKConfig, "hard_steps", 2, baseline=1, target_flops=None)
    (a, ha), (b, hb) = (fit_text(c) for c in configs)
    assert (len(ha["hard"]), len(hb["hard"])) == (1, 2) and not same_weights(a, b)


@knob(TopKConfig, "calibration_batches")
def test_topk_calibration_batches():
    ha, hb = (fit_text(c)[1] for c in arms(TopKConfig, "calibration_batches", 1, hard_steps=0))  # 32 or 8 texts
    assert (ha["final_keep_rate"], ha["calibrated_ratio"]) != (hb["final_keep_rate"], hb["calibrated_ratio"])


# ---------------------------------------------------------------- SaiT (tiny ViT: default stage block 1 of 4)


@knob(SaiTConfig, "policy")
def test_sait_policy():
    default, changed = (vit_forward(c) for c in arms(SaiTConfig, "policy", "mass"))
    assert not torch.equal(default.n_out, changed.n_out)


@knob(SaiTConfig, "score")
def test_sait_score():
    default, changed = (vit_forward(c) for c in arms(SaiTConfig, "score", "head_weighted"))
    assert torch.equal(default.n_out, changed.n_out)  # same counts, other tokens
    assert not close(default.logits, changed.logits)


@knob(SaiTConfig, "stages")
def test_sait_stages():
    default, changed = (vit_forward(c) for c in arms(SaiTConfig, "stages", (2,)))
    assert default.n_out[:, 1].max() < 65 and (default.n_out[:, 1] == default.n_out[:, 3]).all()  # block 1 prunes
    assert (changed.n_out[:, 1] == 65).all() and changed.n_out[:, 2].max() < 65  # block 2 prunes
    assert default.flops.sum() < changed.flops.sum()


@knob(SaiTConfig, "default_level")
def test_sait_default_level():
    default, changed = (vit_forward(c) for c in arms(SaiTConfig, "default_level", 0.4))
    assert changed.n_out.sum() < default.n_out.sum()
    dense = vit_forward(SaiTConfig(default_level=None))
    assert (dense.n_out == 65).all() and default.n_out.sum() < dense.n_out.sum()


@knob(SaiTConfig, "min_keep")
def test_sait_min_keep():
    default, changed = (vit_forward(c) for c in arms(SaiTConfig, "min_keep", 60))
    assert (default.n_out[:, -1] == 1 + 45).all()  # ceil(0.7 * 64) patches + [CLS]
    assert (changed.n_out[:, -1] == 1 + 60).all()


def _sait_train(config: SaiTConfig) -> tuple[trimformer.TokenPrunedModel, list[dict]]:
    pruned, history = fit_images(config)
    return pruned, history["train"]


@knob(SaiTConfig, "train_levels")
def test_sait_train_levels():
    (a, la), (b, lb) = (_sait_train(c) for c in arms(SaiTConfig, "train_levels", (0.3,), steps=2))
    assert la[1]["level"] in SaiTConfig().train_levels and lb[1]["level"] == 0.3
    assert not same_weights(a, b)


@knob(SaiTConfig, "dense_every")
def test_sait_dense_every():
    (a, la), (b, lb) = (_sait_train(c) for c in arms(SaiTConfig, "dense_every", 0, steps=2))
    assert la[0]["level"] == 1.0 and all(row["level"] < 1.0 for row in lb)  # 0: sparse passes only
    assert not same_weights(a, b)


@knob(SaiTConfig, "kd_weight")
def test_sait_kd_weight():
    (a, la), (b, lb) = (_sait_train(c) for c in arms(SaiTConfig, "kd_weight", 0.0, steps=2))
    assert la[0] == lb[0] and la[1]["loss"] != lb[1]["loss"]  # dense step equal, sparse step reweighted
    assert not same_weights(a, b)


@knob(SaiTConfig, "kd_temperature")
def test_sait_kd_temperature():
    (a, la), (b, lb) = (_sait_train(c) for c in arms(SaiTConfig, "kd_temperature", 4.0, steps=2))
    assert la[1]["kd"] != lb[1]["kd"] and not same_weights(a, b)


@knob(SaiTConfig, "token_distill_weight")
def test_sait_token_distill_weight():
    (a, la), (b, lb) = (_sait_train(c) for c in arms(SaiTConfig, "token_distill_weight", 0.0, steps=1))
    assert la[0]["tok"] == lb[0]["tok"] and la[0]["loss"] != lb[0]["loss"]
    assert not same_weights(a, b)


@knob(SaiTConfig, "distill_layer")
def test_sait_distill_layer():
    (a, la), (b, lb) = (_sait_train(c) for c in arms(SaiTConfig, "distill_layer", 2, steps=1))
    assert (a.policy.distill_layer, b.policy.distill_layer) == (3, 2)
    assert la[0]["tok"] != lb[0]["tok"] and not same_weights(a, b)  # another block's attention is the target


@knob(SaiTConfig, "steps")
def test_sait_steps():
    (a, la), (b, lb) = (_sait_train(c) for c in arms(SaiTConfig, "steps", 2, baseline=1))
    assert (len(la), len(lb)) == (1, 2) and not same_weights(a, b)


# ---------------------------------------------------------------- AS-ViT (tiny ViT: default stages 1, 2, 3 of 4)


@knob(ASViTConfig, "stages")
def test_asvit_stages():
    default, changed = (vit_forward(c) for c in arms(ASViTConfig, "stages", (0,), init_threshold=1.0))
    assert (default.n_out[:, 0] == 65).all() and changed.n_out[:, 0].max() < 65
    assert not torch.equal(default.n_out, changed.n_out)


@knob(ASViTConfig, "threshold_units")
def test_asvit_threshold_units():
    # temperature and threshold_lr fixed: their defaults follow the units
    configs = arms(ASViTConfig, "threshold_units", "absolute", init_threshold=0.02, temperature=0.02,
                   threshold_lr=1e-3)
    default, changed = (vit_forward(c) for c in configs)
    assert changed.n_out.sum() < default.n_out.sum()  # a raw score of 0.02 is more than 1.3x uniform at 65 tokens


@knob(ASViTConfig, "init_threshold")
def test_asvit_init_threshold():
    default, changed = (vit_forward(c) for c in arms(ASViTConfig, "init_threshold", 1.0))
    assert (default.n_out == 65).all()  # None: nothing pruned until calibrated
    assert changed.n_out.sum() < default.n_out.sum() and changed.flops.sum() < default.flops.sum()


_ASVIT_TRAIN = dict(init_threshold=1.0)  # no calibration: both arms start from the same thresholds


@knob(ASViTConfig, "temperature")
def test_asvit_temperature():
    (a, ha), (b, hb) = (fit_images(c) for c in arms(ASViTConfig, "temperature", 0.5, steps=3, **_ASVIT_TRAIN))
    assert ha["thresholds"] != hb["thresholds"] and not same_weights(a, b)


@knob(ASViTConfig, "target_flops")
def test_asvit_target_flops_sets_the_calibration():
    (a, ha), (b, hb) = (fit_images(c) for c in arms(ASViTConfig, "target_flops", 0.4, steps=0, calibration_batches=1))
    assert hb["initial_threshold"] > ha["initial_threshold"] and hb["initial_ratio"] < ha["initial_ratio"]


@knob(ASViTConfig, "budget_weight")
def test_asvit_budget_weight():
    (a, ha), (b, hb) = (fit_images(c) for c in arms(ASViTConfig, "budget_weight", 20.0, steps=2, **_ASVIT_TRAIN))
    assert [r["loss"] for r in ha["train"]] != [r["loss"] for r in hb["train"]]
    assert ha["thresholds"] != hb["thresholds"] and not same_weights(a, b)


@knob(ASViTConfig, "kd_weight")
def test_asvit_kd_weight():
    (a, ha), (b, hb) = (fit_images(c) for c in arms(ASViTConfig, "kd_weight", 0.0, steps=2, **_ASVIT_TRAIN))
    assert ha["train"][0]["kd"] == hb["train"][0]["kd"] and ha["train"][0]["loss"] != hb["train"][0]["loss"]
    assert not same_weights(a, b)


@knob(ASViTConfig, "threshold_lr")
def test_asvit_threshold_lr():
    (a, ha), (b, hb) = (fit_images(c) for c in arms(ASViTConfig, "threshold_lr", 0.05, steps=2, **_ASVIT_TRAIN))
    assert max(abs(x - y) for x, y in zip(ha["thresholds"], hb["thresholds"], strict=True)) > 1e-2


@knob(ASViTConfig, "steps")
def test_asvit_steps():
    (a, ha), (b, hb) = (fit_images(c) for c in arms(ASViTConfig, "steps", 2, baseline=1, **_ASVIT_TRAIN))
    assert (len(ha["train"]), len(hb["train"])) == (1, 2) and not same_weights(a, b)


@knob(ASViTConfig, "calibration_batches")
def test_asvit_calibration_batches():
    ha, hb = (fit_images(c)[1] for c in arms(ASViTConfig, "calibration_batches", 1, steps=0))  # 32 or 8 images
    assert (ha["initial_threshold"], ha["initial_ratio"]) != (hb["initial_threshold"], hb["initial_ratio"])


# ---------------------------------------------------------------- EViT (tiny ViT: default layers 1, 2, 3 of 4)


@knob(EViTConfig, "keep_rate")
def test_evit_keep_rate():
    default, changed = (vit_forward(c) for c in arms(EViTConfig, "keep_rate", 0.4))
    assert changed.n_out.sum() < default.n_out.sum() and changed.flops.sum() < default.flops.sum()


@knob(EViTConfig, "layers")
def test_evit_layers():
    default, changed = (vit_forward(c) for c in arms(EViTConfig, "layers", [0]))
    assert (default.n_out[:, 0] == 65).all() and changed.n_out[:, 0].max() < 65
    assert (changed.n_out[:, 0] == changed.n_out[:, -1]).all()  # nothing after block 0
    assert not torch.equal(default.n_out, changed.n_out)


@knob(EViTConfig, "fuse")
def test_evit_fuse():
    default, changed = (vit_forward(c) for c in arms(EViTConfig, "fuse", "average"))
    assert torch.equal(default.n_out, changed.n_out)  # same tokens, another fused one
    assert not close(default.logits, changed.logits)


# ---------------------------------------------------------------- ToMe


@knob(ToMeConfig, "r")
def test_tome_r():
    default, changed = (vit_forward(c) for c in arms(ToMeConfig, "r", 4))
    assert (default.n_out[:, -1] == 65 - 4 * 8).all() and (changed.n_out[:, -1] == 65 - 4 * 4).all()
    assert (default.token_sizes.shape[1], changed.token_sizes.shape[1]) == (33, 49)  # merged slots left
    assert changed.flops.sum() > default.flops.sum()


@knob(ToMeConfig, "proportional_attention")
def test_tome_proportional_attention():
    default, changed = (vit_forward(c) for c in arms(ToMeConfig, "proportional_attention", False))
    assert torch.equal(default.n_out, changed.n_out)
    assert not close(default.logits, changed.logits)


@knob(ToMeConfig, "split")
def test_tome_split():
    default, changed = (vit_forward(c) for c in arms(ToMeConfig, "split", "mergeable"))
    assert torch.equal(default.n_out, changed.n_out)  # as many merges, other pairs
    assert not close(default.logits, changed.logits)


@knob(ToMeConfig, "order")
def test_tome_order():
    default, changed = (vit_forward(c) for c in arms(ToMeConfig, "order", "slots"))
    assert torch.equal(default.n_out, changed.n_out)  # as many merges, other pairs from block 1 on
    assert not close(default.logits, changed.logits)


# ---------------------------------------------------------------- heads and MLP channels (trimformer.heads)


def head_batches(count: int = 2) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(count):
        ids, mask = random_batch(seed=i)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.arange(ids.shape[0]) % 3})
    return out


def heads_pruned(config: HeadPruningConfig, batches: list[dict] | None = None):
    """What ``prune_heads_`` did to tiny_bert with ``config`` (plan and scores)."""
    return trimformer.prune_heads_(tiny_bert(), config, batches or head_batches())


def kept(result) -> tuple[list[int], list[int]]:
    return [len(h) for h in result.plan.heads], [len(c) for c in result.plan.channels]


@knob(HeadPruningConfig, "target_flops")
def test_heads_target_flops():
    default, changed = (heads_pruned(c) for c in arms(HeadPruningConfig, "target_flops", 0.4, calibration_batches=2))
    assert changed.flops_ratio <= 0.4 < 0.6 < default.flops_ratio <= 0.7
    assert sum(map(sum, kept(changed))) < sum(map(sum, kept(default)))


@knob(HeadPruningConfig, "criterion")
def test_heads_criterion():
    default, changed = (heads_pruned(c) for c in arms(HeadPruningConfig, "criterion", "taylor",
                                                         calibration_batches=2))
    assert not torch.allclose(default.scores.heads[0], changed.scores.heads[0])
    assert (default.plan.heads, default.plan.channels) != (changed.plan.heads, changed.plan.channels)


@knob(HeadPruningConfig, "calibration_batches")
def test_heads_calibration_batches():
    batches = head_batches(3)
    default, changed = (heads_pruned(c, batches) for c in arms(HeadPruningConfig, "calibration_batches", 1,
                                                                baseline=3))
    assert not torch.allclose(default.scores.channels[0], changed.scores.channels[0])
    first_only = heads_pruned(HeadPruningConfig(calibration_batches=1), batches[:1])
    assert torch.allclose(changed.scores.channels[0], first_only.scores.channels[0])  # only the first batch was read


@knob(HeadPruningConfig, "prune_heads")
def test_heads_prune_heads():
    default, changed = (heads_pruned(c) for c in arms(HeadPruningConfig, "prune_heads", False, calibration_batches=2))
    assert kept(changed)[0] == [4, 4, 4] and kept(default)[0] != [4, 4, 4]
    assert changed.flops_ratio <= 0.7


@knob(HeadPruningConfig, "prune_mlp")
def test_heads_prune_mlp():
    default, changed = (heads_pruned(c) for c in arms(HeadPruningConfig, "prune_mlp", False, calibration_batches=2,
                                                         target_flops=0.8))
    assert kept(changed)[1] == [64, 64, 64] and kept(default)[1] != [64, 64, 64]
    assert changed.flops_ratio <= 0.8


@knob(HeadPruningConfig, "mlp_multiple")
def test_heads_mlp_multiple():
    default, changed = (heads_pruned(c) for c in arms(HeadPruningConfig, "mlp_multiple", 16, calibration_batches=2))
    assert all(n % 16 == 0 for n in kept(changed)[1]) and not all(n % 16 == 0 for n in kept(default)[1])
    assert changed.flops_ratio <= 0.7


# ---------------------------------------------------------------- AdaPruner (structured pruning)
# Each step is run on its own where the knob acts (sparse training, widths, inheritance), the whole method where it
# acts last (fine-tuning); a tiny zoo CNN on learnable 16x16 images.

ADA = dict(sparse_steps=2, finetune_steps=2, batch_size=8, selection_images=32, calibration_batches=2)


def cnn_images() -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_image_data(64)


def sparse_trained(config: AdaPrunerConfig) -> torch.nn.Module:
    model = tiny_cnn("resnet")
    sparse_train_(model, config, cnn_images(), progress=False)
    return model


def widths_of(config: AdaPrunerConfig, model: torch.nn.Module | None = None):
    return choose_widths(model or tiny_cnn("resnet"), config, cnn_images()[0][:1])[0]


def inherited(config: AdaPrunerConfig):
    model, data = tiny_cnn("resnet"), cnn_images()
    widths = widths_of(config, model).widths
    return inherit(model, config, widths, data, data, data[0][:1], {})


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(cnn_images()[0])


@knob(AdaPrunerConfig, "target_flops")
def test_adapruner_target_flops():
    a, b = (widths_of(c) for c in arms(AdaPrunerConfig, "target_flops", 0.5, **ADA))
    assert b.macs < a.macs and abs(b.fraction - 0.5) <= 0.005


@knob(AdaPrunerConfig, "l1_penalty")
def test_adapruner_l1_penalty():
    a, b = (sparse_trained(c) for c in arms(AdaPrunerConfig, "l1_penalty", 0.5, **ADA))
    assert float(batchnorm_l1(b).detach()) < float(batchnorm_l1(a).detach()) - 0.01


@knob(AdaPrunerConfig, "sparse_steps")
def test_adapruner_sparse_steps():
    common = {k: v for k, v in ADA.items() if k != "sparse_steps"}
    a, b = (sparse_trained(c) for c in arms(AdaPrunerConfig, "sparse_steps", 3, baseline=2, **common))
    assert not same_weights(a, b)


@knob(AdaPrunerConfig, "criteria")
def test_adapruner_criteria():
    common = dict(ADA)
    (a, name_a, _), (b, name_b, _) = (inherited(c) for c in arms(AdaPrunerConfig, "criteria", ("random",),
                                                                  baseline=("bn_scale",), **common))
    assert (name_a, name_b) == ("bn_scale", "random")
    assert not close(logits(a), logits(b))


@knob(AdaPrunerConfig, "calibration_batches")
def test_adapruner_calibration_batches():
    common = {k: v for k, v in ADA.items() if k != "calibration_batches"}
    (a, _, _), (b, _, _) = (inherited(c) for c in arms(AdaPrunerConfig, "calibration_batches", 1, baseline=4,
                                                        **common))
    assert not torch.allclose(a.blocks[0].body[1].running_mean, b.blocks[0].body[1].running_mean)


@knob(AdaPrunerConfig, "selection_images")
def test_adapruner_selection_images():
    common = {k: v for k, v in ADA.items() if k != "selection_images"}
    configs = arms(AdaPrunerConfig, "selection_images", 7, baseline=64, **common)
    reports = [adaprune(tiny_cnn("resnet"), c, cnn_images(), progress=False).report for c in configs]
    assert reports[0]["criterion_accuracy"] != reports[1]["criterion_accuracy"]
    assert all(round(acc * 7) == acc * 7 for acc in reports[1]["criterion_accuracy"].values())


@knob(AdaPrunerConfig, "finetune_steps")
def test_adapruner_finetune_steps():
    common = {k: v for k, v in ADA.items() if k != "finetune_steps"}
    a, b = (adaprune(tiny_cnn("resnet"), c, cnn_images(), progress=False)
            for c in arms(AdaPrunerConfig, "finetune_steps", 0, baseline=2, **common))
    assert len(a.report["finetune_losses"]) == 2 and not b.report["finetune_losses"]
    assert not close(logits(a.model), logits(b.model))


@knob(AdaPrunerConfig, "lr")
def test_adapruner_lr():
    a, b = (sparse_trained(c) for c in arms(AdaPrunerConfig, "lr", 1e-2, **ADA))
    assert not same_weights(a, b)


@knob(AdaPrunerConfig, "batch_size")
def test_adapruner_batch_size():
    common = {k: v for k, v in ADA.items() if k != "batch_size"}
    a, b = (sparse_trained(c) for c in arms(AdaPrunerConfig, "batch_size", 16, baseline=8, **common))
    assert not same_weights(a, b)


@knob(AdaPrunerConfig, "min_channel_ratio")
def test_adapruner_min_channel_ratio():
    model = tiny_cnn("resnet")
    with torch.no_grad():
        model.blocks[0].body[1].weight.mul_(0.01)  # one group far less important than the others: at the floor
    a, b = (widths_of(c, model) for c in arms(AdaPrunerConfig, "min_channel_ratio", 0.5, target_flops=0.6,
                                              tolerance=0.05, **ADA))
    assert a.widths["blocks.0.body.0"] < 4 <= b.widths["blocks.0.body.0"]  # 0.5 x 8 channels at least


@knob(AdaPrunerConfig, "tolerance")
def test_adapruner_tolerance():
    model = tiny_cnn("resnet")
    with torch.no_grad():
        model.blocks[0].body[1].weight.mul_(0.01)  # coarse width steps: 1% is out of reach on this tiny model
    tight, loose = arms(AdaPrunerConfig, "tolerance", 0.05, target_flops=0.6, **ADA)
    with pytest.raises(BudgetError, match="within 1%"):
        widths_of(tight, model)
    assert abs(widths_of(loose, model).fraction / 0.6 - 1) <= 0.05


@knob(AdaPrunerConfig, "seed")
def test_adapruner_seed():
    common = {**ADA, "criteria": ("random",)}
    (a, _, _), (b, _, _) = (inherited(c) for c in arms(AdaPrunerConfig, "seed", 1, **common))
    assert not close(logits(a), logits(b))
