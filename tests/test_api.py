"""The public API in the README's few lines, on a tiny model."""

import torch

import trimformer
from trimformer.pruning import prune
from trimformer.testing import tiny_bert, tiny_vision_model


def test_readme_api_flow(tokenizer, text_data, tmp_path):
    model = tiny_bert(num_labels=2, vocab_size=32)
    config = trimformer.LTPConfig(target_flops=0.6, soft_steps=3, hard_steps=3, calibration_batches=2)
    pruned = trimformer.prune(model, config)
    trimformer.fit(pruned, text_data, trimformer.TrainConfig(batch_size=16, max_length=32), tokenizer=tokenizer)
    texts = sorted(text_data.texts, key=len)[-2:]  # long texts: pruning shows at the calibrated thresholds
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    out = pruned(**batch)
    assert out.logits.shape == (2, 2) and float(out.flops_ratio) < 1.0
    trimformer.save_pruned(pruned, tmp_path / "m", tokenizer)
    again, _ = trimformer.load_pruned(tmp_path / "m")
    assert torch.equal(again(**batch).logits, out.logits)


def test_prune_rejects_unknown_config(tiny_bert):
    import pytest

    with pytest.raises(TypeError, match="not a pruning method config.*LTPConfig, TopKConfig, SaiTConfig"):
        trimformer.prune(tiny_bert, {"target_flops": 0.5})
    with pytest.raises(ValueError, match="no pruning policy"):
        trimformer.fit(trimformer.TokenPrunedModel(tiny_bert), None)


def test_readme_quantization_flow(tokenizer, text_data, tmp_path):
    model = tiny_bert(num_labels=2, vocab_size=32)
    pruned = trimformer.prune(model, trimformer.LTPConfig(final_threshold=0.05)).eval()
    cfg = trimformer.PWLQConfig(wbits=4, layer_wbits={"classifier": 8})  # activations: 8-bit by default
    trimformer.quantize_(pruned.model, cfg)                  # in place: Linear -> fake-quant Linear
    batches = [tokenizer(text_data.texts[i:i + 8], padding=True, return_tensors="pt") for i in (0, 8)]
    trimformer.calibrate(pruned, batches)                    # activation ranges
    trimformer.save_pruned(pruned, tmp_path / "q", tokenizer)  # pruned + bit-packed quantized, one folder
    again, meta = trimformer.load_pruned(tmp_path / "q")
    assert meta["quant_config"]["wbits"] == 4
    assert torch.equal(again(**batches[0]).logits, pruned(**batches[0]).logits)


def test_readme_vision_flow():
    from torch.utils.data import TensorDataset

    from trimformer.methods import SaiTConfig

    torch.manual_seed(0)
    vit = tiny_vision_model("dinov2", seed=None, num_labels=3)
    images = torch.randn(8, 3, 32, 32)
    train_images = TensorDataset(images, torch.randint(0, 3, (8,)))
    sait = prune(vit, SaiTConfig(policy="topk", steps=2))
    trimformer.fit(sait, train_images, trimformer.TrainConfig(batch_size=4, lr=2e-5))
    with sait.policy.at_level(0.5):
        half = sait(pixel_values=images)
    with sait.policy.at_level(None):
        dense = sait(pixel_values=images)
    assert float(half.flops_ratio) < float(dense.flops_ratio) == 1.0
