"""One checkpoint format (trimformer.json, format 2) for text, vision, quantized and CNN models: trimformer.save and
trimformer.load round trips, format-1 and old image_classifier.json folders, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification, Dinov2ForImageClassification, ViTForImageClassification

import trimformer
from trimformer.checkpoint import (
    FORMAT_VERSION,
    META_FILE,
    RESERVED_KEYS,
    WEIGHTS_FILE,
    CheckpointError,
    convert_image_classifier,
    load,
    load_pruned,
    read_meta,
    save,
)
from trimformer.io_utils import file_sha256
from trimformer.loading import infer_task, load_vision_model
from trimformer.methods import LTPConfig, SaiTConfig, ToMeConfig
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import ActSpec, PWLQConfig, UniformConfig, calibrate, fold_batchnorm_, is_quantized, quantize_
from trimformer.quant.modules import QuantConv2d
from trimformer.testing import random_batch, tiny_bert, tiny_vision_model
from trimformer.vision.cnn import CNNConfig, MobileNetCNN

LABELS = ["a", "b", "c"]
TINY_CNN = CNNConfig(stem_channels=8, blocks=((16, 1), (16, 2)), dropout=0.0, num_classes=3)


def _bert() -> BertForSequenceClassification:
    return tiny_bert()


def _dinov2() -> Dinov2ForImageClassification:
    return tiny_vision_model("dinov2", num_labels=3, id2label=dict(enumerate(LABELS)),
                             label2id={n: i for i, n in enumerate(LABELS)})


def _vit() -> ViTForImageClassification:
    return tiny_vision_model("vit", num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                             num_labels=3)


def _cnn(seed: int = 0) -> MobileNetCNN:
    torch.manual_seed(seed)
    model = MobileNetCNN(TINY_CNN).train()
    with torch.no_grad():  # non-trivial running statistics: a lost batch-norm buffer would change the outputs
        model(torch.randn(16, 1, 28, 28))
    return model.eval()


def _text_inputs() -> dict:
    ids, mask = random_batch(batch=3, length=16)
    return {"input_ids": ids, "attention_mask": mask}


def _pixels(side: int = 32) -> dict:
    return {"pixel_values": torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(1))}


def _logits(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def _meta_file(path: Path) -> dict:
    return json.loads((path / META_FILE).read_text())


def _only_json_is_the_metadata(path: Path) -> None:
    assert sorted(p.name for p in path.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])


# --- round trips ------------------------------------------------------------------------------------------------------

def test_text_pruned_round_trip(tmp_path, tokenizer):
    pruned = trimformer.prune(_bert(), LTPConfig(final_threshold=0.05)).eval()
    inputs = _text_inputs()
    save(pruned, tmp_path / "m", processor=tokenizer, extra={"recipe": {"note": "x"}})
    again, meta = load(tmp_path / "m")
    assert isinstance(again, TokenPrunedModel) and not again.training
    assert meta["format_version"] == FORMAT_VERSION == 2 and meta["method"] == "ltp"
    assert meta["model_class"] == "BertForSequenceClassification" and meta["recipe"] == {"note": "x"}
    assert meta["files"] == {WEIGHTS_FILE: file_sha256(tmp_path / "m" / WEIGHTS_FILE)}
    with torch.no_grad():
        a, b = pruned(**inputs), again(**inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.n_out, b.n_out)
    written_json = sorted(p.name for p in (tmp_path / "m").glob("*.json"))
    assert META_FILE in written_json and "config.json" not in written_json  # the others are the tokenizer's
    assert trimformer.load is load and trimformer.save is save


@pytest.mark.parametrize("config", [SaiTConfig(default_level=0.5), ToMeConfig(r=2)], ids=["sait", "tome"])
def test_vision_pruned_round_trip(tmp_path, config):
    pruned = trimformer.prune(_dinov2(), config).eval()
    inputs = _pixels()
    save(pruned, tmp_path / "m", resolution=32, label_names=LABELS)
    _only_json_is_the_metadata(tmp_path / "m")
    again, meta = load(tmp_path / "m")
    assert isinstance(again, TokenPrunedModel) and type(again.policy.config()) is type(config)
    assert again.policy.config() == config
    assert meta["resolution"] == 32 and meta["label_names"] == LABELS
    assert torch.equal(_logits(again, inputs), _logits(pruned, inputs))
    assert infer_task(tmp_path / "m") == "vision"
    wrapped, _ = load_vision_model(tmp_path / "m")
    assert torch.equal(_logits(wrapped, inputs), _logits(pruned, inputs))


def test_checkpoint_saved_under_older_transformers_module_names_loads(tmp_path):
    """transformers 5.17 saved DINOv2's attention as attention.attention.query/key/value and attention.output.dense;
    later versions name them q_proj/k_proj/v_proj/o_proj. Such a checkpoint loads with the same logits."""
    pruned = trimformer.prune(_dinov2(), SaiTConfig(default_level=0.5)).eval()
    save(pruned, tmp_path / "m", resolution=32, label_names=LABELS)
    weights = tmp_path / "m" / "model.safetensors"
    old_names = {".attention.q_proj.": ".attention.attention.query.", ".attention.k_proj.": ".attention.attention.key.",
                 ".attention.v_proj.": ".attention.attention.value.", ".attention.o_proj.": ".attention.output.dense."}
    state = {}
    for key, value in load_file(str(weights)).items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        state[key] = value
    assert any(".attention.attention.query." in k for k in state)
    save_file(state, str(weights))
    meta = _meta_file(tmp_path / "m")
    meta["files"] = {name: file_sha256(tmp_path / "m" / name) for name in meta["files"]}
    (tmp_path / "m" / META_FILE).write_text(json.dumps(meta))
    again, _ = load(tmp_path / "m")
    assert torch.equal(_logits(again, _pixels()), _logits(pruned, _pixels()))


def test_weights_of_another_model_still_fail_to_load(tmp_path):
    """The renames fix names only: a weight no rule maps is still a clear error."""
    pruned = trimformer.prune(_dinov2(), SaiTConfig(default_level=0.5)).eval()
    save(pruned, tmp_path / "m", resolution=32, label_names=LABELS)
    weights = tmp_path / "m" / "model.safetensors"
    state = {k.replace("mlp.fc1", "mlp.first"): v for k, v in load_file(str(weights)).items()}
    save_file(state, str(weights))
    meta = _meta_file(tmp_path / "m")
    meta["files"] = {name: file_sha256(tmp_path / "m" / name) for name in meta["files"]}
    (tmp_path / "m" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not match"):
        load(tmp_path / "m")


@pytest.mark.parametrize("task", ["text", "vision"])
def test_dense_round_trip_gives_the_bare_model(tmp_path, task):
    model = _bert() if task == "text" else _dinov2()
    inputs = _text_inputs() if task == "text" else _pixels()
    save(model, tmp_path / "m")
    _only_json_is_the_metadata(tmp_path / "m")
    again, meta = load(tmp_path / "m")
    assert type(again) is type(model) and not again.training
    assert meta["method"] == "dense" and "quant_config" not in meta
    saved, loaded = model.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    # the config does not carry the attention implementation (the tiny test models use eager, a load sdpa)
    torch.testing.assert_close(_logits(again, inputs), _logits(model, inputs), atol=1e-5, rtol=1e-5)
    assert infer_task(tmp_path / "m") == task


def test_quantized_pruned_text_round_trip(tmp_path):
    pruned = trimformer.prune(_bert(), LTPConfig(final_threshold=0.05)).eval()
    config = PWLQConfig(wbits=4, act=ActSpec(bits=8), layer_wbits={"classifier": 8})
    quantize_(pruned.model, config)
    inputs = _text_inputs()
    calibrate(pruned, [inputs])
    save(pruned, tmp_path / "q")
    again, meta = load(tmp_path / "q")
    assert isinstance(again, TokenPrunedModel) and is_quantized(again.model)
    assert meta["quant_config"] == config.to_dict() and meta["method"] == "ltp"
    assert any(".qpack." in k for k in load_file(str(tmp_path / "q" / WEIGHTS_FILE)))
    with torch.no_grad():
        a, b = pruned(**inputs), again(**inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.n_out, b.n_out)


def test_quantized_dense_model_comes_back_wrapped(tmp_path):
    model = _dinov2()
    quantize_(model, UniformConfig(wbits=6, act=None))
    save(model, tmp_path / "q")
    again, meta = load(tmp_path / "q")
    assert isinstance(again, TokenPrunedModel) and again.policy is None and is_quantized(again.model)
    assert torch.equal(_logits(again, _pixels()), _logits(TokenPrunedModel(model).eval(), _pixels()))


def test_cnn_float_round_trip(tmp_path):
    model = _cnn()
    x = torch.randn(4, 1, 28, 28)
    save(model, tmp_path / "c", resolution=28, label_names=LABELS, extra={"recipe": {"lr": 1e-3}})
    _only_json_is_the_metadata(tmp_path / "c")
    meta = _meta_file(tmp_path / "c")
    assert meta["model_class"] == "MobileNetCNN" and CNNConfig.from_dict(meta["model_config"]) == TINY_CNN
    assert meta["batchnorm_folded"] is False and meta["method"] == "dense" and "mode" not in meta
    again, meta = load(tmp_path / "c")
    assert isinstance(again, MobileNetCNN) and not again.training and again.config == TINY_CNN
    assert torch.equal(again(x), model(x))
    assert meta["label_names"] == LABELS and meta["resolution"] == 28 and meta["recipe"] == {"lr": 1e-3}
    assert infer_task(tmp_path / "c") == "vision"
    with pytest.raises(ValueError, match="CNN.*token pruning needs a vision transformer"):
        load_vision_model(tmp_path / "c")
    with pytest.raises(CheckpointError, match="not a transformers model"):
        load_pruned(tmp_path / "c")


def test_cnn_with_folded_batchnorm_round_trip(tmp_path):
    model = _cnn()
    fold_batchnorm_(model)
    x = torch.randn(4, 1, 28, 28)
    save(model, tmp_path / "c")
    assert _meta_file(tmp_path / "c")["batchnorm_folded"] is True
    again, _ = load(tmp_path / "c")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in again.modules())
    assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("fold", [True, False], ids=["bn-folded", "bn-kept"])
def test_cnn_quantized_round_trip(tmp_path, fold):
    model = _cnn()
    if fold:
        fold_batchnorm_(model)
    config = PWLQConfig(wbits=4, act=ActSpec(bits=8), layer_wbits={"stem.0": 8, "classifier": 8})
    quantize_(model, config)
    calibrate(model, [torch.randn(8, 1, 28, 28)])
    x = torch.randn(4, 1, 28, 28)
    save(model, tmp_path / "q", label_names=LABELS)
    again, meta = load(tmp_path / "q")
    assert isinstance(again, MobileNetCNN) and is_quantized(again)
    assert any(isinstance(m, QuantConv2d) for m in again.modules())
    assert meta["quant_config"] == config.to_dict() and meta["batchnorm_folded"] is fold
    assert again.trimformer_quant_config == config.to_dict()
    saved, loaded = model.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_partly_folded_cnn_is_refused(tmp_path):
    model = _cnn()
    model.stem[1] = torch.nn.Identity()
    with pytest.raises(ValueError, match="batch norms remain"):
        save(model, tmp_path / "c")
    assert not (tmp_path / "c").exists()


# --- what save refuses ------------------------------------------------------------------------------------------------

def test_save_refuses_what_it_cannot_load_back(tmp_path):
    with pytest.raises(TypeError, match="TokenPrunedModel, a transformers model or a MobileNetCNN"):
        save(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(ValueError, match="label_names must name the model's 3 outputs"):
        save(_cnn(), tmp_path / "x", label_names=["only one"])
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        save(_dinov2(), tmp_path / "x", resolution=0)
    with pytest.raises(ValueError, match="given twice"):
        save(_cnn(), tmp_path / "x", resolution=28, extra={"resolution": 32})
    for key in ("files", "model_class", "format_version", "quant_config"):
        assert key in RESERVED_KEYS
        with pytest.raises(ValueError, match="written by trimformer.save itself"):
            save(_cnn(), tmp_path / "x", extra={key: 1})
    assert not (tmp_path / "x").exists()


def test_save_replaces_atomically(tmp_path, monkeypatch):
    import trimformer.checkpoint.store as ckpt

    x = torch.randn(2, 1, 28, 28)
    first, second = _cnn(0), _cnn(1)
    save(first, tmp_path / "c")
    save(second, tmp_path / "c", overwrite=True)
    assert torch.equal(load(tmp_path / "c")[0](x), second(x))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save(first, tmp_path / "c", overwrite=True)
    assert torch.equal(load(tmp_path / "c")[0](x), second(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary folder left behind


# --- format 1 ---------------------------------------------------------------------------------------------------------

def test_format_1_checkpoint_still_loads(tmp_path, tokenizer):
    """A format-1 trimformer.json: the keys the former code wrote (no files, no torch_version), version 1."""
    pruned = trimformer.prune(_bert(), LTPConfig(final_threshold=0.05)).eval()
    save(pruned, tmp_path / "m", processor=tokenizer, extra={"recipe": {"note": "v1"}})
    meta = _meta_file(tmp_path / "m")
    v1 = {k: meta[k] for k in ("trimformer_version", "transformers_version", "model_class", "model_config",
                               "method", "method_config", "mode", "recipe")}
    (tmp_path / "m" / META_FILE).write_text(json.dumps({"format_version": 1, **v1}))
    again, meta = load(tmp_path / "m")
    assert meta["format_version"] == 1 and "files" not in meta
    inputs = _text_inputs()
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, pruned(**inputs).logits)
    model, tok, _ = trimformer.load_model(tmp_path / "m")
    assert tok.vocab_size == tokenizer.vocab_size
    # a format-1 file never named a CNN
    (tmp_path / "m" / META_FILE).write_text(json.dumps({**v1, "format_version": 1, "model_class": "MobileNetCNN"}))
    with pytest.raises(CheckpointError, match="not supported"):
        load(tmp_path / "m")


# --- old image_classifier.json folders --------------------------------------------------------------------------------

def _write_old_image_classifier(model, path: Path, meta: dict) -> Path:
    """What the former trimformer.vision.checkpoint.save_image_classifier wrote (format 1)."""
    path.mkdir()
    if isinstance(model, MobileNetCNN):
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        kind, config = "cnn", model.config.to_dict()
    else:
        model.save_pretrained(path)
        kind, config = "hf", None
    record = {"format_version": 1, "kind": kind, "model_class": type(model).__name__, "config": config,
              "files": {WEIGHTS_FILE: file_sha256(path / WEIGHTS_FILE)}, **meta}
    (path / "image_classifier.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return path


@pytest.mark.parametrize("build", [_cnn, _dinov2, _vit], ids=["cnn", "dinov2", "vit"])
def test_old_image_classifier_folder_loads_and_converts(tmp_path, build):
    model = build()
    cnn = isinstance(model, MobileNetCNN)
    x = torch.randn(2, 1, 28, 28) if cnn else _pixels(model.config.image_size)
    old_meta = {"resolution": 28, "label_names": LABELS, "recipe": {"lr": 1e-3}, "transport": {"tool": "t"}}
    old = _write_old_image_classifier(model, tmp_path / "old", old_meta)
    again, meta = load(old)
    assert type(again) is type(model) and not again.training
    assert torch.equal(_logits(again, x), _logits(model, x))
    assert meta["legacy_format"] == "image_classifier.json" and meta["method"] == "dense"
    assert meta["model_class"] == type(model).__name__
    assert meta["label_names"] == LABELS and meta["resolution"] == 28 and meta["transport"] == {"tool": "t"}
    assert infer_task(old) == "vision"
    if not cnn:
        wrapped, _ = load_vision_model(old)
        assert isinstance(wrapped, TokenPrunedModel) and wrapped.policy is None
        torch.testing.assert_close(_logits(wrapped, x), _logits(model, x), atol=1e-5, rtol=1e-5)  # engine vs HF
    # the converter writes the same model in format 2; in place works too
    new = convert_image_classifier(old, tmp_path / "new")
    _only_json_is_the_metadata(new)
    converted, new_meta = load(new)
    assert torch.equal(_logits(converted, x), _logits(model, x))
    assert new_meta["format_version"] == 2 and "legacy_format" not in new_meta
    assert new_meta["recipe"] == {"lr": 1e-3} and new_meta["label_names"] == LABELS
    assert new_meta["converted_from"] == "image_classifier.json format 1"
    convert_image_classifier(old, old)
    _only_json_is_the_metadata(old)
    assert torch.equal(_logits(load(old)[0], x), _logits(model, x))
    with pytest.raises(CheckpointError, match="already a trimformer.json checkpoint"):
        convert_image_classifier(new, tmp_path / "again")


def test_old_image_classifier_errors_are_clear(tmp_path):
    old = _write_old_image_classifier(_cnn(), tmp_path / "old", {"resolution": 28, "label_names": LABELS})
    record = json.loads((old / "image_classifier.json").read_text())
    weights = old / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load(old)
    (old / "image_classifier.json").write_text(json.dumps({**record, "format_version": 7}))
    with pytest.raises(CheckpointError, match="image-classifier format 7 is not supported"):
        load(old)
    (old / "image_classifier.json").write_text(json.dumps({**record, "kind": "onnx"}))
    with pytest.raises(CheckpointError, match="kind 'onnx'"):
        load(old)
    hf = _write_old_image_classifier(_vit(), tmp_path / "hf", {"resolution": 28, "label_names": LABELS})
    (hf / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load(hf)


# --- errors -----------------------------------------------------------------------------------------------------------

def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no trimformer.json"):
        load(tmp_path / "empty")
    path = save(_cnn(), tmp_path / "c")
    weights = path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt \(its sha256 differs"):
        load(path)
    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated: unreadable even without the hash check
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        load(path, verify=False)
    weights.unlink()
    with pytest.raises(CheckpointError, match="weight file model.safetensors is missing"):
        load(path)
    (path / META_FILE).write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable"):
        load(path)
    (path / META_FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load(path)


@pytest.mark.parametrize("version", [3, 0, None, "2"])
def test_unknown_format_version_is_refused(tmp_path, version):
    path = save(_cnn(), tmp_path / "c")
    meta = _meta_file(path)
    meta["format_version"] = version
    (path / META_FILE).write_text(json.dumps(meta))
    hint = "upgrade trimformer" if version == 3 else "re-create the checkpoint"
    with pytest.raises(CheckpointError, match=rf"checkpoint format {version!r} is not supported.*reads formats 1, 2.*"
                                              rf"{hint}"):
        load(path)


def test_metadata_that_does_not_fit_the_weights_is_refused(tmp_path):
    path = save(_cnn(), tmp_path / "c")
    meta = _meta_file(path)
    (path / META_FILE).write_text(json.dumps({**meta, "model_config": {**meta["model_config"], "stem_channels": 12}}))
    with pytest.raises(CheckpointError, match="do not match the model"):
        load(path)
    (path / META_FILE).write_text(json.dumps({**meta, "model_config": {"width": 3}}))
    with pytest.raises(CheckpointError, match="CNN config is invalid"):
        load(path)
    (path / META_FILE).write_text(json.dumps({**meta, "files": {"../outside.safetensors": "0"}}))
    with pytest.raises(CheckpointError, match="files record"):
        load(path)
    (path / META_FILE).write_text(json.dumps({**meta, "model_class": "GPT2Model"}))
    with pytest.raises(CheckpointError, match="not supported"):
        read_meta(path)


def test_save_never_replaces_what_trimformer_did_not_write(tmp_path: Path) -> None:
    """A file or a user's folder at the output path is refused and left as it was; a checkpoint is replaced."""
    from trimformer.checkpoint import CheckpointError, save
    from trimformer.testing import tiny_bert

    model = tiny_bert()
    user_file = tmp_path / "train.csv"
    user_file.write_text("text,label\n")
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    for target in (user_file, user_dir):
        with pytest.raises(CheckpointError, match="replaces only checkpoints it wrote"):
            save(model, target)
    assert user_file.read_text() == "text,label\n" and (user_dir / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".*.tmp"))  # no hidden copies left behind
    save(model, tmp_path / "ckpt")
    save(model, tmp_path / "ckpt", overwrite=True)  # a checkpoint trimformer wrote is replaced when asked


def test_cli_refuses_an_output_it_did_not_write_before_any_work(tmp_path: Path, capsys) -> None:
    from trimformer.cli import main

    user_file = tmp_path / "train.csv"
    user_file.write_text("text,label\n")
    assert main(["prune", "--model", str(tmp_path / "no-such-model"), "--out", str(user_file)]) == 2
    assert "replaces only checkpoints it wrote" in capsys.readouterr().err
    assert user_file.read_text() == "text,label\n"
