"""Structured pruning of heads and MLP channels (trimformer.heads): parity, budget, composition with token pruning and
PWLQ in one saved model, FLOPs accounting, refusals."""

import json
import math

import pytest
import torch

import trimformer
from trimformer import HeadPruningConfig, LTPConfig, SaiTConfig, prune_heads_
from trimformer.adapters import UnsupportedModelError
from trimformer.checkpoint import CheckpointError
from trimformer.core.flops import dense_encoder_flops, encoder_flops, layer_macs
from trimformer.heads import STRUCTURE_KEY, apply_structure, layer_parts, structure_flops, structure_of
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import ActSpec, PWLQConfig
from trimformer.testing import random_batch, tiny_bert, tiny_vision_model
from trimformer.vision.cnn import CNNConfig, MobileNetCNN


def text_batches(count: int = 2, batch: int = 4, length: int = 20, full: bool = False) -> list[dict]:
    out = []
    for i in range(count):
        ids, mask = random_batch(batch, length, seed=i)
        if full:
            mask = torch.ones_like(mask)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.arange(batch) % 3})
    return out


def image_batches(count: int = 2) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 3, 32, 32, generator=gen), "labels": torch.arange(3) % 5}
            for _ in range(count)]


def logits(model, batch: dict) -> torch.Tensor:
    """Logits of a wrapper or a bare transformers model, without computing a loss."""
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_slicing_away_dead_units_leaves_outputs_unchanged():
    """Heads and channels whose output-projection columns are zero contribute nothing: the norm criterion ranks
    them last and prune_heads_ removes them first, and the smaller model computes what the full one did."""
    model = tiny_bert().eval()
    parts = layer_parts(model)
    with torch.no_grad():
        for part in parts:  # layer l: head 0 and MLP channels 0..31 dead
            part.view.attn_out.weight[:, :part.head_dim] = 0
            part.view.mlp_out.weight[:, :32] = 0
    batch = text_batches(1)[0]
    before = logits(model, batch)
    engine_before = logits(TokenPrunedModel(model).eval(), batch)
    width, mlp = parts[0].view.hidden_size, parts[0].view.mlp_size
    dead = structure_flops(width, [3 * parts[0].head_dim] * 3, [32] * 3, 20.0) / structure_flops(
        width, [width] * 3, [mlp] * 3, 20.0)
    result = prune_heads_(model, HeadPruningConfig(target_flops=dead + 1e-6, calibration_batches=1), [batch])
    assert [h for h in result.plan.heads] == [(1, 2, 3)] * 3
    assert [len(c) for c in result.plan.channels] == [32] * 3 and all(min(c) == 32 for c in result.plan.channels)
    assert torch.allclose(logits(model, batch), before, atol=1e-6)
    assert torch.allclose(logits(TokenPrunedModel(model).eval(), batch), engine_before, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "vit", "deit", "dinov2"])
def test_engine_runs_the_smaller_layers_like_transformers(family):
    """After pruning, trimformer's engine (pruning off) equals transformers' own forward of the smaller model."""
    model = tiny_bert().eval() if family == "bert" else tiny_vision_model(family)
    batches = text_batches() if family == "bert" else image_batches()
    prune_heads_(model, HeadPruningConfig(target_flops=0.6, calibration_batches=2), batches)
    widths = [p.view.attn_width for p in layer_parts(model)]
    assert min(widths) < layer_parts(model)[0].view.hidden_size
    wrapper = TokenPrunedModel(model).eval()
    for batch in batches:
        assert torch.allclose(logits(wrapper, batch), logits(model, batch), atol=1e-5)


def test_nothing_pruned_keeps_the_model_identical():
    """A structure that keeps every head and channel changes no module and no output."""
    model = tiny_bert().eval()
    batch = text_batches(1)[0]
    before = logits(model, batch)
    modules = [id(m) for m in model.modules()]
    apply_structure(model, {"heads": [[0, 1, 2, 3]] * 3, "mlp_sizes": [64] * 3})
    assert [id(m) for m in model.modules()] == modules
    assert torch.equal(logits(model, batch), before)


@pytest.mark.parametrize("target", [0.4, 0.6, 0.8])
def test_flops_budget_is_met_and_measured_flops_agree(target):
    """The plan's FLOPs are at most the target and within a few percent of it, and the engine's measured FLOPs
    (PrunedOutput.flops, per-layer widths) at the calibration length equal the plan's."""
    batches = text_batches(full=True)
    dense = TokenPrunedModel(tiny_bert()).eval()
    with torch.no_grad():
        dense_flops = dense(batches[0]["input_ids"], batches[0]["attention_mask"]).flops
    model = tiny_bert().eval()
    result = prune_heads_(model, HeadPruningConfig(target_flops=target, calibration_batches=2), batches)
    assert target - 0.03 < result.flops_ratio <= target
    with torch.no_grad():
        out = TokenPrunedModel(model).eval()(batches[0]["input_ids"], batches[0]["attention_mask"])
    assert torch.allclose(out.flops / dense_flops, torch.tensor(result.flops_ratio, dtype=out.flops.dtype))
    assert torch.equal(out.flops, out.dense_flops)  # no token pruning: the pruned model's own reference


def test_flops_formula_with_per_layer_widths():
    """attn_width = d is the dense formula; a smaller width lowers exactly the attention terms."""
    n = torch.tensor([[10.0, 8.0]])
    d, f = 32, 64
    dense = encoder_flops(d, f, n, n)
    assert torch.equal(encoder_flops(d, f, n, n, attn_width=torch.tensor([32.0, 32.0])), dense)
    smaller = encoder_flops(d, torch.tensor([64.0, 16.0]), n, n, attn_width=torch.tensor([16.0, 32.0]))
    expected = 2 * (layer_macs(d, 64, 10.0, 10.0, attn_width=16) + layer_macs(d, 16, 8.0, 8.0))
    assert math.isclose(float(smaller), expected)
    lengths = torch.tensor([10])
    assert torch.equal(dense_encoder_flops(d, f, 2, lengths), dense_encoder_flops(d, f, 2, lengths, attn_width=32))


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_heads_pruned_with_token_pruning_packed_equals_masked(family):
    model = tiny_bert().eval() if family == "bert" else tiny_vision_model(family)
    batches = text_batches() if family == "bert" else image_batches()
    prune_heads_(model, HeadPruningConfig(target_flops=0.6, calibration_batches=2), batches)
    config = (LTPConfig(final_threshold=0.05) if family == "bert"
              else SaiTConfig(policy="topk", stages=(1,), default_level=0.5))
    pruned = trimformer.prune(model, config).eval()
    batch = batches[0]
    packed = logits(pruned, batch)
    with torch.no_grad():
        kept = pruned(**{k: v for k, v in batch.items() if k != "labels"}).n_out
    assert float(kept[:, -1].min()) < float(kept[:, 0].max())  # tokens were dropped
    with pruned.options(mode="masked"):
        masked = logits(pruned, batch)
    assert torch.allclose(packed, masked, atol=1e-5)
    with pruned.options(pruning=False):
        assert torch.allclose(logits(pruned, batch), logits(model, batch), atol=1e-5)


def test_heads_ltp_and_pwlq_in_one_saved_model_reload_identically(tmp_path):
    batches = text_batches()
    model = tiny_bert().eval()
    prune_heads_(model, HeadPruningConfig(target_flops=0.6, calibration_batches=2), batches)
    pruned = trimformer.prune(model, LTPConfig(final_threshold=0.05)).eval()
    trimformer.quantize_(pruned, PWLQConfig(wbits=4, act=ActSpec(bits=8)))
    trimformer.calibrate(pruned, [{k: v for k, v in b.items() if k != "labels"} for b in batches])
    trimformer.save(pruned, tmp_path / "m")
    loaded, meta = trimformer.load(tmp_path / "m")
    assert meta["model_config"][STRUCTURE_KEY] == structure_of(model)
    assert meta["method"] == "ltp" and meta["quant_config"]["scheme"] == "pwlq"
    for batch in batches:
        assert torch.equal(logits(loaded, batch), logits(pruned, batch))
    assert [p.view.attn_width for p in layer_parts(loaded.model)] == [p.view.attn_width for p in layer_parts(model)]


@pytest.mark.parametrize("family", ["bert", "dinov2"])
def test_heads_pruned_model_saves_and_reloads_identically(tmp_path, family):
    model = tiny_bert().eval() if family == "bert" else tiny_vision_model(family)
    batches = text_batches() if family == "bert" else image_batches()
    prune_heads_(model, HeadPruningConfig(target_flops=0.5, calibration_batches=2), batches)
    trimformer.save(model, tmp_path / "m")
    loaded, _ = trimformer.load(tmp_path / "m")
    assert type(loaded) is type(model)
    for batch in batches:  # on trimformer's engine (a reload runs transformers' default attention, not eager)
        engine_logits = logits(TokenPrunedModel(model).eval(), batch)
        assert torch.equal(logits(TokenPrunedModel(loaded).eval(), batch), engine_logits)
        assert torch.allclose(logits(loaded, batch), logits(model, batch), atol=1e-6)


def test_a_wrapped_model_is_pruned_in_place_and_its_views_rebuilt():
    wrapper = trimformer.prune(tiny_bert(), LTPConfig(final_threshold=0.05)).eval()
    prune_heads_(wrapper, HeadPruningConfig(target_flops=0.6, calibration_batches=2), text_batches())
    assert [v.attn_width for v in wrapper._views] == [p.view.attn_width for p in layer_parts(wrapper.model)]
    with wrapper.options(pruning=False):
        assert torch.allclose(logits(wrapper, text_batches(1)[0]), logits(wrapper.model, text_batches(1)[0]),
                              atol=1e-5)


def test_config_round_trips_json():
    config = HeadPruningConfig(target_flops=0.55, criterion="taylor", calibration_batches=3, prune_mlp=False,
                               mlp_multiple=8)
    assert HeadPruningConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("kwargs, match", [
    ({"target_flops": 1.0}, "target_flops"), ({"target_flops": 0.0}, "target_flops"),
    ({"target_flops": 1.5}, "target_flops"), ({"target_flops": float("nan")}, "target_flops"),
    ({"criterion": "magnitude"}, "criterion"), ({"calibration_batches": 0}, "calibration_batches"),
    ({"mlp_multiple": 0}, "mlp_multiple"), ({"prune_heads": False, "prune_mlp": False}, "nothing could be pruned"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadPruningConfig(**kwargs)


def test_bad_inputs_are_refused():
    batches = text_batches()
    with pytest.raises(UnsupportedModelError):
        prune_heads_(MobileNetCNN(CNNConfig()), HeadPruningConfig(), batches)
    with pytest.raises(ValueError, match="cannot be met"):  # MLP kept whole: attention alone cannot reach 10%
        prune_heads_(tiny_bert(), HeadPruningConfig(target_flops=0.1, prune_mlp=False, calibration_batches=2), batches)
    with pytest.raises(ValueError, match="only 2 batches"):
        prune_heads_(tiny_bert(), HeadPruningConfig(calibration_batches=3), batches)
    with pytest.raises(ValueError, match="labelled"):
        prune_heads_(tiny_bert(), HeadPruningConfig(criterion="taylor", calibration_batches=1),
                     [{k: v for k, v in batches[0].items() if k != "labels"}])
    with pytest.raises(ValueError, match="returns a loss"):
        prune_heads_(tiny_bert(base=True), HeadPruningConfig(criterion="taylor", calibration_batches=1), batches)
    model = tiny_bert()
    prune_heads_(model, HeadPruningConfig(calibration_batches=2), batches)
    with pytest.raises(ValueError, match="pruned already"):
        prune_heads_(model, HeadPruningConfig(calibration_batches=2), batches)
    quantized = tiny_bert()
    trimformer.quantize_(quantized, PWLQConfig(wbits=4, act=None))
    with pytest.raises(ValueError, match="quantized"):
        prune_heads_(quantized, HeadPruningConfig(calibration_batches=2), batches)


def test_a_corrupt_structure_record_is_refused(tmp_path):
    model = tiny_bert()
    prune_heads_(model, HeadPruningConfig(calibration_batches=2), text_batches())
    trimformer.save(model, tmp_path / "m")
    meta_file = tmp_path / "m" / "trimformer.json"
    meta = json.loads(meta_file.read_text())
    meta["model_config"][STRUCTURE_KEY]["mlp_sizes"] = [4, 4]  # two layers described, the model has three
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not describe"):
        trimformer.load(tmp_path / "m")
