"""Every verb of the public API on a tiny BERT, a tiny HF ViT and a tiny Dinov2 (LayerScale): prune, fit, evaluate,
benchmark, quantize_ + calibrate, save, load."""

import pytest
import torch
from torch.utils.data import TensorDataset

import trimformer
from trimformer.data.batching import fixed_batches
from trimformer.data.images import image_collate
from trimformer.data.text import text_collate
from trimformer.testing import make_tokenizer, synthetic_text_data, tiny_bert, tiny_vision_model

CASES = {
    "bert": (lambda: tiny_bert(num_labels=2, vocab_size=32),
             trimformer.LTPConfig(target_flops=0.6, soft_steps=2, hard_steps=2, calibration_batches=2)),
    "vit": (lambda: tiny_vision_model("vit", num_labels=3), trimformer.SaiTConfig(steps=2, default_level=0.5)),
    "dinov2": (lambda: tiny_vision_model("dinov2", num_labels=3),
               trimformer.ASViTConfig(target_flops=0.7, steps=2, calibration_batches=2)),
}


def _data(name: str):
    if name == "bert":
        return synthetic_text_data(32), make_tokenizer()
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)), None


@pytest.mark.parametrize("name", list(CASES))
def test_every_verb(name, tmp_path):
    build, config = CASES[name]
    data, tokenizer = _data(name)
    pruned = trimformer.prune(build(), config)
    history = trimformer.fit(pruned, data, trimformer.TrainConfig(batch_size=8, max_length=32), tokenizer=tokenizer)
    assert history
    result = trimformer.evaluate(pruned, data, tokenizer)
    assert result.num_examples == len(data) and 0 <= result.accuracy <= 100 and result.flops_ratio < 1.0
    record = trimformer.benchmark(pruned, data, batch_size=4, tokenizer=tokenizer, num_samples=8, repeats=1)
    assert record["method"] == pruned.policy.method and record["speedup"] > 0
    assert record["execution"]["mode"] == "packed" and "threads" in record
    trimformer.quantize_(pruned, trimformer.PWLQConfig(wbits=4))
    collate = text_collate(tokenizer, 32) if tokenizer else image_collate
    calibration = fixed_batches(data, collate, 8)  # unlabelled model inputs
    assert trimformer.calibrate(pruned, calibration) == []
    trimformer.save(pruned, tmp_path / "m", processor=tokenizer)
    again, meta = trimformer.load(tmp_path / "m")
    assert meta["quant_config"]["wbits"] == 4 and meta["method"] == pruned.policy.method
    quantized = trimformer.evaluate(pruned, data, tokenizer)
    assert trimformer.evaluate(again, data, tokenizer).predictions == quantized.predictions


def test_dense_checkpoints_load_as_the_bare_model(tmp_path):
    model = tiny_vision_model("dinov2")
    trimformer.save(model, tmp_path / "d")
    again, meta = trimformer.load(tmp_path / "d")
    assert type(again) is type(model) and meta["method"] == "dense"
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
