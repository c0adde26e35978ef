"""Method configs: JSON round trip, validation, and every option changing behaviour."""

import pytest
import torch
from conftest import random_batch

from trimformer.methods import LTPConfig, LTPPolicy, TopKConfig, TopKPolicy
from trimformer.methods.ltp import calibrate_ltp
from trimformer.methods.topk import calibrate_topk
from trimformer.pruned import TokenPrunedModel
from trimformer.train.calibration import flops_ratio_on


def test_configs_roundtrip_json():
    for cfg in (LTPConfig(final_threshold=0.02, target_flops=None, lambda_=0.05), TopKConfig(final_keep_rate=0.7)):
        assert type(cfg).from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown option"):
        LTPConfig.from_dict({"final_treshold": 0.1})


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(target_flops=1.5), dict(final_threshold=-1)])
def test_ltp_config_validation(bad):
    with pytest.raises(ValueError):
        LTPConfig(**bad)


def test_topk_config_validation():
    with pytest.raises(ValueError):
        TopKConfig(final_keep_rate=0)


def _run(model, policy, mode="packed"):
    ids, mask = random_batch(batch=6, length=24, seed=2)
    return TokenPrunedModel(model, policy, mode=mode)(ids, mask)


def test_final_threshold_changes_pruning(tiny_bert):
    low = _run(tiny_bert, LTPPolicy(3, LTPConfig(final_threshold=0.02)))
    high = _run(tiny_bert, LTPPolicy(3, LTPConfig(final_threshold=0.08)))
    assert high.flops.sum() < low.flops.sum()


def test_temperature_changes_soft_masks(tiny_bert):
    sharp = _run(tiny_bert, LTPPolicy(3, LTPConfig(final_threshold=0.05, temperature=1e-4), stage="soft"), "masked")
    smooth = _run(tiny_bert, LTPPolicy(3, LTPConfig(final_threshold=0.05, temperature=1e-1), stage="soft"), "masked")
    assert not torch.allclose(sharp.n_out, smooth.n_out)


def test_stage_changes_masks(tiny_bert):
    policy = LTPPolicy(3, LTPConfig(final_threshold=0.05), stage="soft")
    soft = _run(tiny_bert, policy, "masked")
    policy.stage = "hard"
    hard = _run(tiny_bert, policy, "masked")
    assert not torch.equal(soft.n_out, hard.n_out)
    assert torch.equal(hard.n_out, hard.n_out.round())
    with pytest.raises(ValueError):
        policy.stage = "medium"


def test_keep_rate_changes_topk(tiny_bert):
    a = _run(tiny_bert, TopKPolicy(3, TopKConfig(final_keep_rate=0.9)))
    b = _run(tiny_bert, TopKPolicy(3, TopKConfig(final_keep_rate=0.3)))
    assert b.flops.sum() < a.flops.sum()


@pytest.mark.parametrize("target", [0.4, 0.7])
def test_calibration_reaches_flops_target(tiny_bert, target):
    batches = []
    for seed in range(3):
        ids, mask = random_batch(batch=8, length=32, seed=seed)
        batches.append({"input_ids": ids, "attention_mask": mask})
    ltp = TokenPrunedModel(tiny_bert, LTPPolicy(3, LTPConfig()))
    _, achieved = calibrate_ltp(ltp, batches, target)
    assert abs(achieved - target) < 0.05
    assert abs(flops_ratio_on(ltp, batches) - achieved) < 1e-9
    topk = TokenPrunedModel(tiny_bert, TopKPolicy(3, TopKConfig()))
    _, achieved = calibrate_topk(topk, batches, target)
    assert abs(achieved - target) < 0.05
