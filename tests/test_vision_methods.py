"""SaiT and Adaptive Sparse ViT on tiny random ViT / DeiT / Dinov2 classifiers: selection, levels, recipes."""

import json
import math

import pytest
import torch

import trimformer
from trimformer.core.selection import cumulative_mass_mask, mass_keep_counts
from trimformer.data.batching import calibration_batches
from trimformer.data.images import image_collate
from trimformer.methods import ASViTConfig, ASViTPolicy, SaiTConfig, SaiTPolicy
from trimformer.methods.asvit import ste_flops_ratio
from trimformer.methods.sait import fit_sait, sait_level_for_step, score_distillation_kl
from trimformer.methods.stages import scale_blocks
from trimformer.pruned import TokenPrunedModel
from trimformer.pruning import prune
from trimformer.testing import random_batch, tiny_bert, tiny_vision_model
from trimformer.train.calibration import flops_ratio_on
from trimformer.train.loop import TrainConfig

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8, num_labels=5)
PATCHES = 16  # (32 / 8)^2


def _vit():
    return tiny_vision_model("vit", seed=None, **SMALL)


def _deit():
    return tiny_vision_model("deit", seed=None, **SMALL)


def _dinov2():
    return tiny_vision_model("dinov2", seed=None, **SMALL)


BUILDERS = {"vit": _vit, "deit": _deit, "dinov2": _dinov2}
PREFIX = {"vit": 1, "deit": 2, "dinov2": 1}


def _model(name="vit", seed=0):
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def _pixels(batch=4, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, 32, 32, generator=g), i % 5) for i in range(n)]


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- cumulative-mass selection (pure)


def test_mass_counts_flat_versus_peaked():
    alive = torch.ones(2, 16, dtype=torch.bool)
    flat = torch.full((16,), 1 / 16)
    peaked = torch.tensor([0.5, 0.3] + [0.2 / 14] * 14)
    counts = mass_keep_counts(torch.stack([flat, peaked]), alive, 0.5)
    assert counts.tolist() == [8, 1]  # flat: exactly half the tokens; peaked: the top token already holds 0.5
    assert mass_keep_counts(torch.stack([flat, peaked]), alive, 0.9).tolist() == [15, 9]


def test_mass_counts_per_sample_levels_minimum_and_dead_tokens():
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.0, 0.0]])
    alive = torch.tensor([[True] * 4, [False, True, True, True], [True] * 4])
    counts = mass_keep_counts(scores, alive, torch.tensor([0.7, 0.7, 0.5]), minimum=1)
    assert counts.tolist() == [2, 2, 4]  # row 2 renormalised over 3 live tokens; all-zero row keeps all
    assert mass_keep_counts(scores, alive, 0.1, minimum=3).tolist() == [3, 3, 4]
    mask = cumulative_mass_mask(scores, alive, 0.7)
    assert mask.tolist()[1] == [False, True, True, False]
    assert not (mask & ~alive).any()
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="mass must be in"):
            mass_keep_counts(scores, alive, bad)


def test_score_distillation_kl():
    cand = torch.ones(2, 5, dtype=torch.bool)
    cand[:, 0] = False
    a = torch.rand(2, 5, generator=torch.Generator().manual_seed(0))
    assert score_distillation_kl(a, a * 3.0, cand).abs() < 1e-6  # scale-free: only the distributions matter
    assert score_distillation_kl(a, a.flip(1), cand) > 0


def test_scale_blocks():
    assert scale_blocks((4, 7, 10), 12) == (4, 7, 10)
    assert scale_blocks((4, 7, 10), 6) == (2, 4, 5)
    assert scale_blocks((4, 7, 10), 3) == (1, 2)
    assert scale_blocks((3,), 24) == (6,)
    assert SaiTPolicy(4, SaiTConfig()).stages == (1,)
    assert ASViTPolicy(4, ASViTConfig()).stages == (1, 2, 3)


# ---------------------------------------------------------------- SaiT


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("policy", ["topk", "mass"])
def test_sait_dense_levels_equal_the_original(name, policy):
    model = _model(name)
    pixels = _pixels()
    ref = model(pixel_values=pixels).logits
    pruned = prune(model, SaiTConfig(policy=policy, default_level=0.5))
    for level in (None, 1.0):
        pruned.policy.set_level(level)
        out = pruned(pixel_values=pixels)
        assert torch.allclose(out.logits, ref, atol=1e-5)
        assert float(out.flops_ratio) == 1.0


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("policy,score", [("topk", "cls_attention"), ("mass", "cls_attention"),
                                          ("topk", "head_weighted"), ("mass", "head_weighted")])
def test_sait_packed_equals_masked_and_prefix_kept(name, policy, score):
    model = _model(name)
    pruned = prune(model, SaiTConfig(policy=policy, score=score, stages=(1, 2), default_level=0.4))
    pixels = _pixels()
    with pruned.policy.capture() as cap:
        packed = pruned(pixel_values=pixels)
    pruned.mode = "masked"
    masked = pruned(pixel_values=pixels)
    assert torch.allclose(packed.logits, masked.logits, atol=1e-5)
    assert torch.equal(packed.n_out, masked.n_out)
    prefix = PREFIX[name]
    for record in cap.pruned():
        assert record.keep[:, :prefix].all()
    assert [r.layer for r in cap.pruned()] == [1, 2]
    assert torch.all(packed.n_out[:, -1] >= prefix + 1)
    assert packed.flops_ratio < 0.9


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("rate", [0.25, 0.5, 0.8])
def test_sait_topk_keeps_exactly_the_configured_count(name, rate):
    pruned = prune(_model(name), SaiTConfig(policy="topk", stages=(1,), default_level=rate))
    out = pruned(pixel_values=_pixels())
    expected = math.ceil(rate * PATCHES) + PREFIX[name]  # prefix tokens are kept and not counted
    assert out.n_out[:, 1].tolist() == [expected] * 4
    assert out.n_in[:, 1].tolist() == [PATCHES + PREFIX[name]] * 4


def _attention(cls_row: torch.Tensor, heads=2) -> torch.Tensor:
    """probs [1, H, N, N] whose [CLS] row is ``cls_row`` and other rows uniform."""
    n = cls_row.numel()
    probs = torch.full((1, heads, n, n), 1.0 / n)
    probs[0, :, 0, :] = cls_row
    return probs


def test_sait_mass_keeps_more_tokens_for_flat_importance():
    policy = SaiTPolicy(4, SaiTConfig(policy="mass", default_level=0.8))
    decide = policy.decision(policy.stages[0], 1)
    n = 17
    alive = torch.ones(1, n, dtype=torch.bool)
    values = torch.randn(1, 2, n, 8)
    flat = _attention(torch.full((n,), 1.0 / n))
    peaked_row = torch.full((n,), 0.1 / (n - 3))
    peaked_row[0], peaked_row[5], peaked_row[9] = 0.2, 0.5, 0.2
    peaked = _attention(peaked_row)
    flat_kept, peaked_kept = int(decide(flat, alive, values).sum()), int(decide(peaked, alive, values).sum())
    assert flat_kept == 1 + math.ceil(0.8 * 16) and peaked_kept < flat_kept
    keep = decide(peaked, alive, values)
    assert keep[0, 0] and keep[0, 5] and keep[0, 9]  # [CLS] kept; the two heavy patches chosen
    topk = SaiTPolicy(4, SaiTConfig(policy="topk", default_level=0.8)).decision(1, 1)
    assert int(topk(flat, alive, values).sum()) == int(topk(peaked, alive, values).sum())  # not adaptive


def test_sait_set_level_switches_sparsity_without_reloading():
    pruned = prune(_model(), SaiTConfig(policy="topk", default_level=0.75))
    pixels = _pixels()
    before = _state(pruned)
    counts = {}
    for level in (0.25, 0.5, 0.75, None):
        pruned.policy.set_level(level)
        counts[level] = pruned(pixel_values=pixels).n_out.sum().item()
    assert counts[0.25] < counts[0.5] < counts[0.75] < counts[None]
    with pruned.policy.at_level(0.25):
        assert pruned(pixel_values=pixels).n_out.sum().item() == counts[0.25]
    assert pruned.policy.level is None  # restored
    assert all(torch.equal(a, b) for a, b in zip(before.values(), _state(pruned).values(), strict=True))
    assert "level" not in json.dumps(list(pruned.state_dict()))  # the level is not in the weights
    with pytest.raises(ValueError, match="level must be None"):
        pruned.policy.set_level(0.0)
    with pytest.raises(ValueError, match="level must be None"):
        pruned.policy.set_level(1.5)


def test_sait_token_distillation_reaches_the_pruning_block():
    pruned = prune(_model(), SaiTConfig(default_level=None))
    policy = pruned.policy
    with policy.capture() as cap:
        pruned(pixel_values=_pixels())
    record, target = cap.at(policy.stages[0]), cap.at(policy.distill_layer).scores
    cand = record.alive.clone()
    cand[:, 0] = False
    score_distillation_kl(record.scores, target.detach(), cand).backward()
    blocks = pruned.adapter.blocks(pruned.model)
    assert blocks[policy.stages[0]].query.weight.grad.abs().sum() > 0
    assert blocks[policy.distill_layer].query.weight.grad is None  # the target is detached


def test_sait_level_schedule():
    cfg = SaiTConfig(train_levels=(0.3, 0.6, 0.9), dense_every=2)
    levels = [sait_level_for_step(cfg, 0, s) for s in range(40)]
    assert all(lv is None for lv in levels[::2])
    assert {lv for lv in levels[1::2]} == {0.3, 0.6, 0.9}
    assert levels == [sait_level_for_step(cfg, 0, s) for s in range(40)]
    assert None not in [sait_level_for_step(SaiTConfig(dense_every=0), 0, s) for s in range(10)]


def _train_sait(seed=0, steps=2, policy="topk", state_dir=None, model_seed=0):
    pruned = prune(_model("vit", model_seed),
                                 SaiTConfig(policy=policy, steps=steps, train_levels=(0.5,), default_level=0.7))
    logs = trimformer.fit(pruned, _data(), TrainConfig(batch_size=8, lr=1e-3, seed=seed, save_every=2),
                          state_dir=state_dir)
    return pruned, logs


@pytest.mark.parametrize("policy", ["topk", "mass"])
def test_sait_recipe_trains_and_is_deterministic(policy):
    initial = _state(prune(_model(), SaiTConfig()))
    a, logs = _train_sait(policy=policy)
    b, _ = _train_sait(policy=policy)
    train = logs["train"]
    assert [row["level"] for row in train] == [1.0, 0.5]  # dense step, then a sparse step
    assert "kd" in train[1] and "tok" in train[0] and train[1]["flops"] < 1.0
    assert any(not torch.equal(initial[k], v) for k, v in _state(a).items())
    assert all(torch.equal(x, y) for x, y in zip(_state(a).values(), _state(b).values(), strict=True))
    assert a.mode == "packed" and not a.training and a.policy.level == 0.7
    c, _ = _train_sait(policy=policy, seed=1)
    assert any(not torch.equal(x, y) for x, y in zip(_state(a).values(), _state(c).values(), strict=True))


def test_sait_recipe_resumes(tmp_path, monkeypatch):
    import trimformer.train.loop as training

    full, _ = _train_sait(steps=4)
    original = training._save_state

    def save_then_crash(*args):
        original(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _train_sait(steps=4, state_dir=tmp_path)
    monkeypatch.setattr(training, "_save_state", original)
    resumed, logs = _train_sait(steps=4, state_dir=tmp_path)
    assert [row["step"] for row in logs["train"]] == [3, 4]
    for x, y in zip(_state(full).values(), _state(resumed).values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6)


# ---------------------------------------------------------------- AS-ViT


@pytest.mark.parametrize("name", list(BUILDERS))
def test_asvit_hard_masks_packed_equals_masked_and_train_forward(name):
    pruned = prune(_model(name), ASViTConfig(init_threshold=1.0))
    pixels = _pixels()
    with torch.no_grad(), pruned.policy.capture() as cap:
        packed = pruned(pixel_values=pixels)
        pruned.mode = "masked"
        masked = pruned(pixel_values=pixels)
        pruned.train()  # straight-through: the same hard forward
        trained = pruned(pixel_values=pixels)
    assert all(r.keep.dtype == torch.bool and r.keep[:, :PREFIX[name]].all() for r in cap.pruned())
    assert torch.allclose(packed.logits, masked.logits, atol=1e-5)
    assert torch.allclose(trained.logits, masked.logits, atol=1e-6)
    assert torch.equal(trained.n_out, masked.n_out)
    assert packed.flops_ratio < 1.0
    dense = prune(_model(name), ASViTConfig(init_threshold=0.0))(pixel_values=pixels)
    assert torch.allclose(dense.logits, _model(name)(pixel_values=pixels).logits, atol=1e-5)


def test_asvit_straight_through_passes_gradient_to_thresholds():
    pruned = prune(_model(), ASViTConfig(init_threshold=1.0, temperature=0.1)).train()
    policy = pruned.policy
    blocks = pruned.adapter.blocks(pruned.model)
    with policy.capture() as cap:
        out = pruned(pixel_values=_pixels(batch=8))
    torch.nn.functional.cross_entropy(out.logits, torch.arange(8) % 5).backward(retain_graph=True)
    # Task loss -> thresholds through the kept tokens' gates (the last block's patch outputs never reach a
    # [CLS] head, so its threshold gets nothing from the CE).
    assert policy.thresholds.grad is not None and policy.thresholds.grad[0] != 0
    policy.thresholds.grad = None
    ratio = ste_flops_ratio(out.n_in, out.n_out, out.dense_flops, cap, blocks[0].hidden_size, blocks[0].mlp_size)
    assert torch.allclose(ratio, out.flops_ratio.to(ratio.dtype))  # hard value
    ratio.backward()
    grad = policy.thresholds.grad
    assert (grad < 0).all()  # raising a threshold lowers the FLOPs
    assert grad[0].abs() > grad[-1].abs()  # an early stage saves more blocks


def _sharp_vit(scale=6.0):
    """A tiny ViT whose attention is peaked like a trained one (random init attends almost uniformly)."""
    model = _model()
    with torch.no_grad():
        for block in prune(model, SaiTConfig()).adapter.blocks(model):
            block.query.weight.mul_(scale)
            block.key.weight.mul_(scale)
    return model


@pytest.mark.parametrize("init,rho", [(0.7, 0.5), (1.1, 0.95)])
def test_asvit_budget_moves_flops_towards_rho(init, rho):
    cfg = ASViTConfig(init_threshold=init, target_flops=rho, kd_weight=0.0, temperature=0.1, threshold_lr=0.03,
                      steps=10)
    pruned = prune(_sharp_vit(), cfg)
    data = _data()
    batches = calibration_batches(data, image_collate, 8, 2)
    before = flops_ratio_on(pruned, batches)
    history = trimformer.fit(pruned, data, TrainConfig(batch_size=8, lr=1e-6))  # weights barely move
    after = flops_ratio_on(pruned, batches)
    assert abs(after - rho) < abs(before - rho) - 0.1
    moved = torch.tensor(history["thresholds"]) - init
    assert (moved > 0).all() if before > rho else (moved < 0).all()


def test_asvit_recipe_calibrates_trains_and_is_deterministic():
    def run(seed=0):
        pruned = prune(_model(), ASViTConfig(target_flops=0.6, steps=3, calibration_batches=2))
        return pruned, trimformer.fit(pruned, _data(), TrainConfig(batch_size=8, lr=1e-3, seed=seed))

    initial = _state(prune(_model(), ASViTConfig()))
    a, history = run()
    b, _ = run()
    assert abs(history["initial_ratio"] - 0.6) < 0.05
    assert history["thresholds"] != [history["initial_threshold"]] * 3  # learned away from the calibration
    assert any(not torch.equal(initial[k], v) for k, v in _state(a).items() if "threshold" not in k)
    assert all(torch.equal(x, y) for x, y in zip(_state(a).values(), _state(b).values(), strict=True))
    assert a.mode == "packed" and not a.training


# ---------------------------------------------------------------- configs


def test_configs_roundtrip_json():
    for cfg in (SaiTConfig(policy="mass", score="head_weighted", stages=(2, 4), default_level=None,
                           train_levels=(0.8, 0.9)),
                SaiTConfig(),
                ASViTConfig(stages=(1, 3), target_flops=0.5, init_threshold=0.8),
                ASViTConfig(threshold_units="absolute")):
        again = type(cfg).from_json(cfg.to_json())
        assert again == cfg and again.to_json() == cfg.to_json()
    assert ASViTConfig(threshold_units="absolute").temperature == 1e-4  # the paper's T
    with pytest.raises(ValueError, match="unknown option"):
        SaiTConfig.from_dict({"keep_rate": 0.5})


@pytest.mark.parametrize("cls,bad,message", [
    (SaiTConfig, dict(policy="random"), "SaiT policy must be one of"),
    (SaiTConfig, dict(score="norm"), "SaiT score must be one of"),
    (SaiTConfig, dict(default_level=0.0), "default_level must be None"),
    (SaiTConfig, dict(train_levels=(0.5, 1.2)), "train_levels entries"),
    (SaiTConfig, dict(train_levels=()), "at least one level"),
    (SaiTConfig, dict(stages=(3, 2)), "strictly increasing"),
    (SaiTConfig, dict(stages=()), "at least one block"),
    (SaiTConfig, dict(stages=(-1,)), "ints >= 0"),
    (SaiTConfig, dict(dense_every=1), "never train a sparse pass"),
    (SaiTConfig, dict(kd_weight=1.5), "kd_weight"),
    (SaiTConfig, dict(kd_temperature=0), "kd_temperature"),
    (SaiTConfig, dict(min_keep=0), "min_keep"),
    (ASViTConfig, dict(temperature=0.0), "temperature must be > 0"),
    (ASViTConfig, dict(target_flops=1.5), "target_flops"),
    (ASViTConfig, dict(threshold_units="raw"), "threshold_units"),
    (ASViTConfig, dict(init_threshold=-1.0), "init_threshold"),
    (ASViTConfig, dict(threshold_lr=0.0), "threshold_lr"),
])
def test_bad_configs_raise(cls, bad, message):
    with pytest.raises(ValueError, match=message):
        cls(**bad)


def test_bad_placements_raise():
    with pytest.raises(ValueError, match="outside the model's blocks"):
        SaiTPolicy(4, SaiTConfig(stages=(4,)))
    with pytest.raises(ValueError, match="distill_layer"):
        SaiTPolicy(4, SaiTConfig(stages=(3,)))  # nothing deeper than the last block to distil from
    with pytest.raises(ValueError, match="distill_layer"):
        SaiTPolicy(4, SaiTConfig(stages=(1,), distill_layer=1))
    with pytest.raises(ValueError, match="outside the model's blocks"):
        ASViTPolicy(4, ASViTConfig(stages=(1, 7)))
    bert = tiny_bert(vocab_size=32, num_hidden_layers=4)
    with pytest.raises(ValueError, match="made for vision"):
        prune(bert, SaiTConfig())
    with pytest.raises(TypeError):
        prune(_model(), object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected SaiTPolicy"):
        fit_sait(prune(_model(), ASViTConfig()), _data(), image_collate, TrainConfig(batch_size=8))
    with pytest.raises(ValueError, match="training free"):
        trimformer.fit(prune(_model(), trimformer.ToMeConfig(r=2)), _data(), TrainConfig(batch_size=8))


@pytest.mark.parametrize("mode", ["masked", "packed"])
@pytest.mark.parametrize("name", ["vit", "dinov2"])
def test_fused_attention_blocks_equal_explicit_attention(name, mode):
    """Blocks without a decision run fused attention; the result equals the explicit path, dead keys included."""
    model = _model(name).eval()
    pruned = TokenPrunedModel(model, SaiTPolicy(4, SaiTConfig(stages=(1,), default_level=0.5)), mode=mode)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = pruned(pixel_values=pixels).logits
        with pruned.options(fused_attention=False):
            explicit = pruned(pixel_values=pixels).logits
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_fused_attention_respects_padding_and_dropout():
    """Text: padded keys masked in the fused blocks; attention dropout still active in training mode."""
    model = tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    pruned = TokenPrunedModel(model, None)
    ids, mask = random_batch()
    with torch.no_grad():
        fused = pruned(input_ids=ids, attention_mask=mask).logits
        with pruned.options(fused_attention=False):
            explicit = pruned(input_ids=ids, attention_mask=mask).logits
        reference = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    pruned.train()
    with torch.no_grad():
        a = pruned(input_ids=ids, attention_mask=mask).logits
        b = pruned(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(a, b)  # only the attention dropout is random here
