"""Training recipes on a tiny model: fine-tune, LTP (soft -> hard), top-k, resume."""

import json

import torch

import trimformer
from trimformer.data.text import text_collate
from trimformer.evaluation import evaluate
from trimformer.methods import LTPConfig, TopKConfig
from trimformer.pruning import prune
from trimformer.testing import tiny_bert
from trimformer.train.finetune import finetune_dense
from trimformer.train.loop import TrainConfig


def _model():
    return tiny_bert(num_labels=2, vocab_size=32)


def test_finetune_reduces_loss(tokenizer, text_data):
    model = _model()
    config = TrainConfig(batch_size=16, lr=1e-3, max_length=32)
    logs = finetune_dense(model, text_data, text_collate(tokenizer, config.max_length), config, 24)
    assert len(logs) == 24
    first, last = sum(x["loss"] for x in logs[:4]), sum(x["loss"] for x in logs[-4:])
    assert last < first


def test_ltp_recipe_reaches_flops_target(tokenizer, text_data):
    model = prune(_model(), LTPConfig(target_flops=0.6, soft_steps=6, hard_steps=6,
                                                    calibration_batches=3))
    before = model.policy.thresholds.learned.detach().clone()
    history = trimformer.fit(model, text_data, TrainConfig(batch_size=16, lr=1e-3, max_length=32), tokenizer=tokenizer)
    assert model.mode == "packed" and model.policy.stage == "hard"
    assert not torch.equal(before, model.policy.thresholds.learned)  # thresholds were learned
    assert abs(history["calibrated_ratio"] - 0.6) < 0.08
    result = evaluate(model, text_data, tokenizer, 32, progress=False)
    assert result.flops_ratio < 0.8
    assert len(history["soft"]) == 6 and len(history["hard"]) == 6


def test_lambda_regulariser_without_target(tokenizer, text_data):
    model = prune(_model(), LTPConfig(target_flops=None, lambda_=0.5, soft_steps=4, hard_steps=2))
    history = trimformer.fit(model, text_data, TrainConfig(batch_size=16, lr=1e-3, max_length=32), tokenizer=tokenizer)
    assert "calibrated_ratio" not in history and len(history["soft"]) == 4


def test_topk_recipe(tokenizer, text_data):
    model = prune(_model(), TopKConfig(target_flops=0.5, hard_steps=3, calibration_batches=3))
    history = trimformer.fit(model, text_data, TrainConfig(batch_size=16, lr=1e-3, max_length=32), tokenizer=tokenizer)
    assert abs(history["calibrated_ratio"] - 0.5) < 0.08
    assert model.policy.config().final_keep_rate == history["final_keep_rate"]


def test_training_resumes_from_saved_state(tokenizer, text_data, tmp_path, monkeypatch):
    import trimformer.train.loop as training

    config = TrainConfig(batch_size=16, lr=1e-3, max_length=32, save_every=3)
    full = _model()
    finetune_dense(full, text_data, text_collate(tokenizer, config.max_length), config, 6)

    original = training._save_state

    def save_then_crash(*args):
        original(*args)
        raise KeyboardInterrupt  # the run dies right after its first saved state (step 3)

    monkeypatch.setattr(training, "_save_state", save_then_crash)
    try:
        finetune_dense(_model(), text_data, text_collate(tokenizer, config.max_length), config, 6, state_dir=tmp_path)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(training, "_save_state", original)
    assert json.loads((tmp_path / "finetune" / "progress.json").read_text())["step"] == 3
    resumed = _model()
    finetune_dense(resumed, text_data, text_collate(tokenizer, config.max_length), config, 6, state_dir=tmp_path)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_skips_finished_stages(tokenizer, text_data, tmp_path):
    """A run that died in the hard stage resumes there: the soft stage is not trained again."""
    cfg = LTPConfig(target_flops=0.6, soft_steps=3, hard_steps=3, calibration_batches=2)
    train_cfg = TrainConfig(batch_size=16, lr=1e-3, max_length=32, save_every=1)
    first = prune(_model(), cfg)
    trimformer.fit(first, text_data, train_cfg, tokenizer=tokenizer, state_dir=tmp_path)
    again = prune(_model(), cfg)
    history = trimformer.fit(again, text_data, train_cfg, tokenizer=tokenizer, state_dir=tmp_path)
    assert history["soft"] == [] and history["hard"] == []
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
