"""Save / load round trip, corrupt checkpoints, atomic writes (the format itself: test_checkpoint_format.py)."""

import json

import pytest
import torch
from conftest import random_batch

from trimformer.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    is_checkpoint,
    load,
    load_model,
    load_pruned,
    save,
    save_pruned,
)
from trimformer.io_utils import atomic_write_dir, atomic_write_json
from trimformer.methods import LTPConfig, LTPPolicy, TopKConfig, TopKPolicy
from trimformer.pruned import TokenPrunedModel


@pytest.mark.parametrize("method", ["ltp", "topk"])
def test_save_load_roundtrip_identical_predictions(tiny_bert, tokenizer, tmp_path, method):
    n = tiny_bert.config.num_hidden_layers
    if method == "ltp":
        policy = LTPPolicy(n, LTPConfig(final_threshold=0.08))
        with torch.no_grad():
            policy.thresholds.learned.copy_(torch.tensor([0.01, -0.02, 0.03]))
            policy.thresholds.scale.fill_(1.7)
    else:
        policy = TopKPolicy(n, TopKConfig(final_keep_rate=0.4))
    model = TokenPrunedModel(tiny_bert, policy)
    save_pruned(model, tmp_path / "ckpt", tokenizer, extra={"recipe": {"note": "test"}})
    loaded, meta = load_pruned(tmp_path / "ckpt")
    assert meta["method"] == method and meta["recipe"] == {"note": "test"}
    ids, mask = random_batch()
    a, b = model(ids, mask), loaded(ids, mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.n_out, b.n_out)
    again, tok, _ = load_model(tmp_path / "ckpt")
    assert tok.vocab_size == tokenizer.vocab_size
    assert meta["format_version"] == FORMAT_VERSION and set(meta["files"]) == {"model.safetensors"}
    same, _ = load(tmp_path / "ckpt")  # trimformer.load reads what save_pruned wrote: one format
    assert torch.equal(same(ids, mask).logits, a.logits)


def test_save_and_load_dense_text_model_with_its_tokenizer(tiny_bert, tokenizer, tmp_path):
    save(tiny_bert, tmp_path / "d", processor=tokenizer, label_names=["x", "y", "z"])
    assert is_checkpoint(tmp_path / "d") and not (tmp_path / "d" / "config.json").exists()
    bare, meta = load(tmp_path / "d")
    assert type(bare) is type(tiny_bert) and meta["method"] == "dense" and meta["label_names"] == ["x", "y", "z"]
    wrapped, tok, _ = load_model(tmp_path / "d")
    assert isinstance(wrapped, TokenPrunedModel) and tok.vocab_size == tokenizer.vocab_size
    with pytest.raises(ValueError, match="label_names must name the model's 3 outputs"):
        save(tiny_bert, tmp_path / "e", label_names=["x"])


def test_load_model_refuses_image_checkpoints(tmp_path):
    from trimformer.vision.cnn import CNNConfig, MobileNetCNN

    save(MobileNetCNN(CNNConfig(stem_channels=4, blocks=((8, 1),))).eval(), tmp_path / "cnn")
    with pytest.raises(CheckpointError, match="holds an image model \\(MobileNetCNN\\)"):
        load_model(tmp_path / "cnn")


def test_corrupt_checkpoint_gets_clear_error(tiny_bert, tmp_path):
    model = TokenPrunedModel(tiny_bert, None)
    save_pruned(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pruned(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pruned(tmp_path / "ckpt", verify=False)  # the hash check off: safetensors itself refuses the file
    (tmp_path / "ckpt" / "trimformer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_pruned(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_pruned(tmp_path / "nowhere")


def test_wrong_model_class_in_checkpoint_is_refused(tiny_bert, tmp_path):
    save_pruned(TokenPrunedModel(tiny_bert, None), tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "trimformer.json").read_text())
    meta["model_class"] = "GPT2Model"
    (tmp_path / "ckpt" / "trimformer.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not supported"):
        load_pruned(tmp_path / "ckpt")


def test_interrupted_writes_leave_previous_files_intact(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"v": 1})

    class Boom(Exception):
        pass

    def failing_dir(folder):
        (folder / "half.txt").write_text("partial")
        raise Boom

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "old.txt").write_text("old")
    with pytest.raises(Boom):
        atomic_write_dir(tmp_path / "dir", failing_dir)
    assert (tmp_path / "dir" / "old.txt").read_text() == "old"
    assert not (tmp_path / "dir" / "half.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "r.json"]  # no temporary leftovers
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "r.json", {1j: 2})  # not serialisable: fails mid-write
    assert json.loads((tmp_path / "r.json").read_text()) == {"v": 1}
