"""Quantized checkpoints: prune then quantize, one saved model; reload is bit-identical; corruption is caught."""

import pytest
import torch

from trimformer.checkpoint import CheckpointError, load, load_pruned, save, save_pruned
from trimformer.methods import LTPConfig, LTPPolicy
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import (
    ActSpec,
    BaseQuantConfig,
    PWLQConfig,
    QuantizedWeight,
    UniformConfig,
    calibrate,
    config_from_dict,
    is_quantized,
    quantize_,
)
from trimformer.testing import random_batch, tiny_bert


def _float_pruned() -> TokenPrunedModel:
    model = tiny_bert()
    return TokenPrunedModel(model, LTPPolicy(3, LTPConfig(final_threshold=0.05)))


def _quantized_pruned(config: BaseQuantConfig) -> tuple[TokenPrunedModel, dict]:
    pruned = _float_pruned()
    quantize_(pruned.model, config)
    ids, mask = random_batch()
    batch = {"input_ids": ids, "attention_mask": mask}
    if config.act is not None:
        calibrate(pruned, [batch])
    return pruned.eval(), batch


@pytest.mark.parametrize("config", [
    PWLQConfig(wbits=4, act=ActSpec(bits=8)),
    UniformConfig(wbits=6, act=None, layer_wbits={"classifier": 8}),
    PWLQConfig(wbits=4, act=ActSpec(bits=4, region_bit="inside"), breakpoint="search", num_breakpoints=2,
               region_bit="inside"),
])
def test_pruned_quantized_round_trip_is_bit_identical(tmp_path, config):
    model, batch = _quantized_pruned(config)
    save_pruned(model, tmp_path / "q")
    loaded, meta = load_pruned(tmp_path / "q")
    assert meta["method"] == "ltp" and config_from_dict(meta["quant_config"]) == config
    assert is_quantized(loaded.model)
    saved_sd, loaded_sd = model.state_dict(), loaded.state_dict()
    assert saved_sd.keys() == loaded_sd.keys()
    for key, value in saved_sd.items():
        assert torch.equal(value, loaded_sd[key]), key
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.n_out, b.n_out)
    assert int(a.n_out[:, -1].min()) < batch["input_ids"].shape[1]  # pruning still happens after quantizing
    codes = [m.qweight for m in loaded.model.modules() if isinstance(getattr(m, "qweight", None), QuantizedWeight)]
    assert codes and all(c.codes.dtype == torch.int32 for c in codes)


def test_quantized_bare_model_saves_with_trimformer_save_and_loads_wrapped(tmp_path):
    """A quantized dense model (quantize_ on the bare transformers model) goes through trimformer.save / load too."""
    model = tiny_bert()
    config = UniformConfig(wbits=4, act=ActSpec(bits=8))
    quantize_(model, config)
    ids, mask = random_batch()
    calibrate(model, [{"input_ids": ids, "attention_mask": mask}])
    save(model, tmp_path / "q")
    loaded, meta = load(tmp_path / "q")
    assert isinstance(loaded, TokenPrunedModel) and loaded.policy is None and meta["method"] == "dense"
    assert config_from_dict(meta["quant_config"]) == config and is_quantized(loaded.model)
    saved_sd, loaded_sd = model.state_dict(), loaded.model.state_dict()
    assert saved_sd.keys() == loaded_sd.keys() and all(torch.equal(v, loaded_sd[k]) for k, v in saved_sd.items())
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).logits, TokenPrunedModel(model).eval()(ids, mask).logits)


def test_quantized_checkpoint_is_smaller(tmp_path):
    model, _ = _quantized_pruned(PWLQConfig(wbits=4, act=None))
    save_pruned(model, tmp_path / "q")
    save_pruned(_float_pruned(), tmp_path / "f")
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < (tmp_path / "f" / "model.safetensors").stat().st_size


def test_quantized_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    model, _ = _quantized_pruned(PWLQConfig(wbits=4, act=None))
    save_pruned(model, tmp_path / "q")
    meta_file = tmp_path / "q" / "trimformer.json"
    import json

    meta = json.loads(meta_file.read_text())
    meta["model_config"]["intermediate_size"] += 8  # the packed codes no longer fit the model
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not belong to this model|do not match"):
        load_pruned(tmp_path / "q")


def test_quantizing_twice_is_refused():
    model, _ = _quantized_pruned(UniformConfig(act=None))
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(model.model, PWLQConfig())


def test_checkpoint_with_old_quant_config_metadata_loads(tmp_path):
    """A checkpoint whose trimformer.json holds the former QuantConfig's flat dict loads into the new type."""
    import json

    model, batch = _quantized_pruned(PWLQConfig(wbits=4, act=ActSpec(bits=4, scheme="pwlq", region_bit="inside"),
                                                region_bit="inside", layer_wbits={"classifier": 8}))
    save_pruned(model, tmp_path / "q")
    meta_file = tmp_path / "q" / "trimformer.json"
    meta = json.loads(meta_file.read_text())
    meta["quant_config"] = {  # what QuantConfig(..., abits=4, act_scheme="pwlq", ...).to_dict() wrote
        "abits": 4, "act_clip": "topk_median", "act_percentile": 99.99, "act_scheme": "pwlq", "act_topk": 10,
        "bias_correction": True, "breakpoint": "gaussian", "exclude": [], "include": ["*"], "layer_abits": {},
        "layer_wbits": {"classifier": 8}, "num_breakpoints": 1, "per_channel": True, "pow2_scale": False,
        "region_bit": "inside", "scheme": "pwlq", "wbits": 4, "weight_clip": "minmax",
    }
    meta_file.write_text(json.dumps(meta))
    loaded, _ = load_pruned(tmp_path / "q")
    assert loaded.trimformer_quant_config == model.model.trimformer_quant_config  # upgraded to the new form
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
