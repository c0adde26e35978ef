"""Structured (channel) pruning on Torch-Pruning: groups, physical removal, MAC budgets, BN recalibration,
save / load of the smaller model, and their refusals. Tiny zoo CNNs from trimformer.testing."""

from __future__ import annotations

import json

import pytest
import torch

from trimformer.checkpoint.meta import CheckpointError
from trimformer.structured import (
    AdaPrunerConfig,
    BudgetError,
    StructureError,
    WidthCost,
    channel_groups,
    channel_scores,
    count_macs,
    keep_top,
    load_structured,
    pruned_copy,
    recalibrate_batchnorm_,
    save_structured,
    search_budget,
)
from trimformer.structured.adapruner import adaprune
from trimformer.structured.baselines import from_scratch, magnitude_uniform, network_slimming
from trimformer.structured.budget import uniform_widths
from trimformer.structured.graph import layer_widths
from trimformer.testing import tiny_cnn, tiny_image_data, tiny_plain_cnn

KINDS = ("resnet", "mobilenetv2")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return tiny_image_data(16)[0]


def half(model, x):
    groups = channel_groups(model, x[:1])
    return keep_top(channel_scores(model, x[:1], "l1"), {g.name: max(1, g.channels // 2) for g in groups})


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_pruned_gives_identical_outputs(kind, images):
    model = tiny_cnn(kind)
    groups = channel_groups(model, images[:1])
    full = pruned_copy(model, images[:1], {g.name: range(g.channels) for g in groups})
    with torch.no_grad():
        assert torch.equal(full(images), model(images))
    assert count_macs(full, images[:1]) == count_macs(model, images[:1])


@pytest.mark.parametrize("kind", KINDS)
def test_pruning_removes_channels_physically(kind, images):
    model = tiny_cnn(kind)
    small = pruned_copy(model, images[:1], half(model, images))
    macs, params = count_macs(model, images[:1])
    small_macs, small_params = count_macs(small, images[:1])
    assert small_macs < 0.5 * macs and small_params < 0.6 * params
    assert small(images).shape == (len(images), 10)
    assert sum(p.numel() for p in small.parameters()) == small_params
    # the original is untouched
    assert count_macs(model, images[:1]) == (macs, params)


def test_groups_follow_residual_coupling(images):
    groups = {g.name: g for g in channel_groups(tiny_cnn("resnet"), images[:1])}
    # the stem's channels feed the first block's residual sum: one group with both batch norms
    assert set(groups["stem.0"].batchnorms) == {"stem.1", "blocks.0.body.4"}
    assert "classifier" not in groups  # the output layer is never pruned


def test_kept_channels_keep_their_weights(images):
    model = tiny_cnn("resnet")
    kept = [0, 3, 5]
    small = pruned_copy(model, images[:1], {"blocks.0.body.0": kept})
    assert torch.equal(small.blocks[0].body[0].weight, model.blocks[0].body[0].weight[kept])
    assert torch.equal(small.blocks[0].body[3].weight, model.blocks[0].body[3].weight[:, kept])


@pytest.mark.parametrize("structure, match", [({"nope": [0]}, "unknown channel groups"),
                                               ({"blocks.0.body.0": []}, "at least one"),
                                               ({"blocks.0.body.0": [0, 0]}, "distinct"),
                                               ({"blocks.0.body.0": [99]}, "in \\[0, 8\\)")])
def test_bad_structures_are_refused(structure, match, images):
    with pytest.raises(StructureError, match=match):
        pruned_copy(tiny_cnn("resnet"), images[:1], structure)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", [0.5, 0.7])
def test_budget_search_meets_the_target_within_one_percent(kind, target, images):
    model = tiny_cnn(kind)
    groups = channel_groups(model, images[:1])
    cost = WidthCost(model, images[:1])
    result = search_budget(lambda r: uniform_widths(groups, r), cost, target, 0.0, 1.0,
                           maximum={g.name: g.channels for g in groups}, fill_order=[g.name for g in groups])
    assert abs(result.fraction / target - 1) <= 0.01
    assert result.macs <= target * cost.dense * 1.01
    small = pruned_copy(model, images[:1], {n: range(w) for n, w in result.widths.items()})
    assert count_macs(small, images[:1])[0] == result.macs  # the count is the real pruned model's


def test_unreachable_budget_is_refused(images):
    model = tiny_cnn("resnet")
    groups = channel_groups(model, images[:1])
    with pytest.raises(BudgetError, match="unreachable"):
        search_budget(lambda r: uniform_widths(groups, r, min_ratio=0.5), WidthCost(model, images[:1]), 0.05, 0.0,
                      1.0, maximum={g.name: g.channels for g in groups})


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5, float("nan")])
def test_target_flops_outside_the_unit_interval_is_refused(target):
    with pytest.raises(ValueError, match="target_flops"):
        AdaPrunerConfig(target_flops=target)


def test_config_round_trips_through_json():
    config = AdaPrunerConfig(target_flops=0.5, criteria=("bn_scale", "random"), finetune_steps=7)
    assert AdaPrunerConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown importance criterion"):
        AdaPrunerConfig(criteria=("l2",))


def test_criteria_rank_differently(images):
    model = tiny_cnn("resnet")
    scores = {c: channel_scores(model, images[:1], c) for c in ("l1", "bn_scale", "random")}
    bn = scores["bn_scale"]["blocks.0.body.0"]
    assert torch.allclose(bn, model.blocks[0].body[1].weight.abs())
    assert not torch.equal(scores["l1"]["blocks.0.body.0"].argsort(), bn.argsort())
    with pytest.raises(StructureError, match="no batch norm"):
        channel_scores(tiny_plain_cnn(), images[:1], "bn_scale")


def test_batchnorm_recalibration_reestimates_running_stats(images):
    model = pruned_copy(tiny_cnn("resnet"), images[:1], half(tiny_cnn("resnet"), images))
    bn = model.blocks[0].body[1]
    before = bn.running_mean.clone()
    recalibrate_batchnorm_(model, [images[:8], images[8:]])
    assert not model.training and not torch.allclose(before, bn.running_mean)
    again = recalibrate_batchnorm_(model, [images])  # the plain average of the batches, whatever came before
    assert torch.allclose(again.blocks[0].body[1].running_mean, bn.running_mean)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm_(model, [])


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_predictions(kind, images, tmp_path):
    model = tiny_cnn(kind)
    small = pruned_copy(model, images[:1], half(model, images), recipe={"method": "test"})
    save_structured(small, tmp_path / "small", extra={"note": "x"})
    back, meta = load_structured(tmp_path / "small")
    with torch.no_grad():
        assert torch.equal(back(images), small(images))
    assert meta["recipe"] == {"method": "test"} and meta["extra"] == {"note": "x"}
    assert count_macs(back, images[:1]) == count_macs(small, images[:1])
    save_structured(back, tmp_path / "again")  # a loaded model saves again
    assert torch.equal(load_structured(tmp_path / "again")[0](images), back(images))


def test_load_shrinks_a_given_dense_model_when_no_architecture_is_recorded(images, tmp_path):
    model = tiny_plain_cnn()
    small = pruned_copy(model, images[:1], {"0": [1, 2, 5]})
    save_structured(small, tmp_path / "plain")
    with pytest.raises(ValueError, match="pass model="):
        load_structured(tmp_path / "plain")
    back, _ = load_structured(tmp_path / "plain", model=tiny_plain_cnn(seed=1))
    assert torch.equal(back(images), small(images))


def test_corrupt_or_mismatched_checkpoints_are_refused(images, tmp_path):
    model = tiny_cnn("resnet")
    path = save_structured(pruned_copy(model, images[:1], half(model, images)), tmp_path / "small")
    with pytest.raises(CheckpointError, match="already holds"):
        save_structured(pruned_copy(model, images[:1], {}), path)
    meta = json.loads((path / "structured.json").read_text())
    meta["groups"]["blocks.0.body.0"]["kept"] = [0, 1]  # another structure than the weights'
    (path / "structured.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="widths differ"):
        load_structured(path)
    (path / "structured.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_structured(path)
    other = save_structured(pruned_copy(model, images[:1], half(model, images)), tmp_path / "other")
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="sha256"):
        load_structured(other)
    with pytest.raises(ValueError, match="no pruning record"):
        save_structured(model, tmp_path / "dense")
    (tmp_path / "mine").mkdir()
    with pytest.raises(CheckpointError, match="never replaced"):
        save_structured(pruned_copy(model, images[:1], {}), tmp_path / "mine", overwrite=True)
    with pytest.raises(CheckpointError, match="not a structured-pruning checkpoint"):
        load_structured(tmp_path / "mine")


# ---------------------------------------------------------------- AdaPruner, the verb, the baselines

QUICK = dict(sparse_steps=2, finetune_steps=2, batch_size=8, selection_images=32, calibration_batches=2)


def test_adapruner_meets_the_budget_and_leaves_the_model_alone(tmp_path):
    import trimformer

    data = tiny_image_data(64)
    model = tiny_cnn("resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = trimformer.structured_prune(model, trimformer.AdaPrunerConfig(target_flops=0.6, **QUICK), data,
                                         progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    macs = count_macs(result.model, data[0][:1])[0]
    assert abs(macs / count_macs(model, data[0][:1])[0] / 0.6 - 1) <= 0.01
    assert result.report["criterion"] in ("l1", "bn_scale", "random")
    assert result.model.trimformer_structure["recipe"]["criterion"] == result.report["criterion"]
    # the package's save / load verbs take the smaller model
    trimformer.save(result.model, tmp_path / "ada")
    back, meta = trimformer.load(tmp_path / "ada")
    with torch.no_grad():
        assert torch.equal(back(data[0]), result.model(data[0]))
    assert meta["recipe"]["config"]["target_flops"] == 0.6


def test_adapruner_is_deterministic():
    data = tiny_image_data(64)
    runs = [adaprune(tiny_cnn("mobilenetv2"), AdaPrunerConfig(**QUICK), data, progress=False) for _ in range(2)]
    assert runs[0].report == runs[1].report
    with torch.no_grad():
        assert torch.equal(runs[0].model(data[0]), runs[1].model(data[0]))


def test_adapruner_refuses_bad_input():
    import trimformer

    data = tiny_image_data(16)
    with pytest.raises(ValueError, match="batch norm"):
        adaprune(tiny_plain_cnn(), AdaPrunerConfig(**QUICK), data, progress=False)
    with pytest.raises(TypeError, match="structured_prune"):
        trimformer.prune(tiny_cnn(), AdaPrunerConfig())
    with pytest.raises(TypeError, match="not a structured pruning config"):
        trimformer.structured_prune(tiny_cnn(), trimformer.TopKConfig(), data)
    with pytest.raises(ValueError, match="pair"):
        adaprune(tiny_cnn(), AdaPrunerConfig(**QUICK), data[0], progress=False)
    with pytest.raises(BudgetError, match="unreachable"):
        adaprune(tiny_cnn(), AdaPrunerConfig(target_flops=0.02, **QUICK), data, progress=False)
    small = pruned_copy(tiny_cnn(), data[0][:1], half(tiny_cnn(), data[0]))
    with pytest.raises(ValueError, match="already structurally pruned"):
        adaprune(small, AdaPrunerConfig(**QUICK), data, progress=False)


def test_baselines_meet_the_same_budget_and_scratch_keeps_the_architecture():
    data = tiny_image_data(64)
    model = tiny_cnn("resnet")
    dense_macs = count_macs(model, data[0][:1])[0]
    common = dict(finetune_steps=1, batch_size=8, calibration_batches=1, progress=False)
    uniform, slim = magnitude_uniform(model, 0.6, data, **common), network_slimming(model, 0.6, data, **common)
    for result in (uniform, slim):
        assert abs(count_macs(result.model, data[0][:1])[0] / dense_macs / 0.6 - 1) <= 0.01
    assert uniform.report["widths"] != slim.report["widths"]  # one ratio everywhere vs one global threshold
    scratch = from_scratch(result.model, data, steps=1, batch_size=8, progress=False)
    assert layer_widths(scratch.model) == layer_widths(result.model)
    assert not torch.equal(scratch.model.blocks[0].body[0].weight, result.model.blocks[0].body[0].weight)
    assert scratch.model.trimformer_structure["recipe"]["method"] == "from_scratch"


def test_tracing_leaves_a_training_model_unchanged(images):
    model = tiny_cnn("resnet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    channel_groups(model, images[:4])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
