"""Image classifiers: the MobileNet-style CNN and its checkpoints in trimformer's one format (tiny, random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Dinov2ForImageClassification

from trimformer.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, load, save
from trimformer.testing import tiny_vision_model
from trimformer.vision.cnn import CNNConfig, MobileNetCNN, count_parameters, prepare_images

TINY_CNN = CNNConfig(stem_channels=8, blocks=((16, 1), (32, 2), (32, 2)), dropout=0.0)
LABELS = [f"class{i}" for i in range(10)]


def _tiny_cnn(seed: int = 0) -> MobileNetCNN:
    torch.manual_seed(seed)
    model = MobileNetCNN(TINY_CNN)
    # Non-trivial running statistics, so that a lost BN buffer would change the outputs.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 28, 28))
    return model.eval()


def _tiny_dinov2(seed: int = 0) -> Dinov2ForImageClassification:
    return tiny_vision_model("dinov2", seed=seed, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                             patch_size=7, num_labels=10, id2label=dict(enumerate(LABELS)),
                             label2id={n: i for i, n in enumerate(LABELS)})


def _meta() -> dict:
    return {"resolution": 28, "label_names": LABELS, "extra": {"recipe": {"lr": 1e-3, "epochs": 1}}}


def test_cnn_forward_shapes_and_layers() -> None:
    model = MobileNetCNN(TINY_CNN).eval()
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model.stem(x).shape == (3, 8, 28, 28)
    assert model.blocks(model.stem(x)).shape == (3, 32, 7, 7)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) == 1 + 2 * len(TINY_CNN.blocks)
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == len(TINY_CNN.blocks)
    assert all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in depthwise)
    # every conv is followed by its own BN (the Sequential order conv, bn, relu)
    for seq in (m for m in model.modules() if isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d)):
        assert isinstance(seq[1], nn.BatchNorm2d) and seq[1].num_features == seq[0].out_channels
        assert seq[0].bias is None


def test_default_cnn_size_and_fx_traceable() -> None:
    model = MobileNetCNN().eval()
    assert 100_000 <= count_parameters(model) <= 300_000
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(traced(x), model(x))


def test_cnn_config_json_roundtrip_and_validation() -> None:
    config = CNNConfig(blocks=((24, 1), (48, 2)), dropout=0.2, num_classes=7)
    again = CNNConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.blocks[0], tuple)
    assert json.loads(config.to_json())["blocks"] == [[24, 1], [48, 2]]
    with pytest.raises(ValueError, match="unknown option"):
        CNNConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="stride"):
        CNNConfig(blocks=((8, 3),))
    with pytest.raises(ValueError, match="dropout"):
        CNNConfig(dropout=1.0)


def test_prepare_images() -> None:
    images = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    x = prepare_images(images, TINY_CNN)
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (1.0 - TINY_CNN.input_mean) / TINY_CNN.input_std))
    with pytest.raises(ValueError, match="expected images"):
        prepare_images(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), TINY_CNN)


def test_cnn_checkpoint_roundtrip(tmp_path: Path) -> None:
    model = _tiny_cnn()
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    out = save(model, tmp_path / "cnn", **_meta())
    assert sorted(p.name for p in out.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    loaded, meta = load(out)
    assert isinstance(loaded, MobileNetCNN) and not loaded.training
    assert loaded.config == TINY_CNN
    assert torch.equal(loaded(x), expected)
    assert meta["model_class"] == "MobileNetCNN" and meta["resolution"] == 28 and meta["label_names"] == LABELS
    assert meta["recipe"] == {"lr": 1e-3, "epochs": 1}


def test_hf_dinov2_checkpoint_roundtrip(tmp_path: Path) -> None:
    model = _tiny_dinov2()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    save(model, tmp_path / "vit", **_meta())
    loaded, meta = load(tmp_path / "vit")
    assert isinstance(loaded, Dinov2ForImageClassification) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, expected)
    assert meta["method"] == "dense" and meta["model_class"] == "Dinov2ForImageClassification"
    assert loaded.config.id2label[3] == "class3"


def test_save_replaces_previous_and_interrupted_save_keeps_it(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "ckpt"
    first, second = _tiny_cnn(0), _tiny_cnn(1)
    x = torch.randn(2, 1, 28, 28)
    save(first, target, **_meta())
    save(second, target, **_meta(), overwrite=True)
    assert torch.equal(load(target)[0](x), second(x))

    import trimformer.checkpoint.store as ckpt

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save(first, target, **_meta(), overwrite=True)
    assert torch.equal(load(target)[0](x), second(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind


def test_bad_meta_is_refused(tmp_path: Path) -> None:
    model = _tiny_cnn()
    with pytest.raises(ValueError, match="label_names"):
        save(model, tmp_path / "a", resolution=28, label_names=["x"])
    with pytest.raises(ValueError, match="label_names must be a list of strings"):
        save(model, tmp_path / "a", label_names="x" * 10)
    with pytest.raises(ValueError, match="resolution"):
        save(model, tmp_path / "a", resolution=28.0)
    with pytest.raises(TypeError, match="MobileNetCNN"):
        save(nn.Linear(2, 2), tmp_path / "a", **_meta())
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("kind", ["cnn", "hf"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path: Path, kind: str) -> None:
    model = _tiny_cnn() if kind == "cnn" else _tiny_dinov2()
    path = save(model, tmp_path / kind, **_meta())
    weights = path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt.*re-create the checkpoint"):
        load(path)
    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated: unreadable even without the hash check
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        load(path, verify=False)


def test_missing_or_broken_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "nowhere")
    path = save(_tiny_cnn(), tmp_path / "c", **_meta())
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} is missing"):
        load(path)
    (path / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{META_FILE} is unreadable"):
        load(path)
    (path / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"holds no {META_FILE}"):
        load(path)


def test_cnn_weights_not_matching_config(tmp_path: Path) -> None:
    path = save(_tiny_cnn(), tmp_path / "c", **_meta())
    record = json.loads((path / META_FILE).read_text())
    record["model_config"]["stem_channels"] = 12
    (path / META_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="do not match the model"):
        load(path)


def test_tiny_vit_patch_size_sets_the_token_count() -> None:
    from trimformer.report.vision_demo import tiny_vit

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 28, 28)
    for patch, tokens in ((4, 49 + 1), (2, 196 + 1)):
        model = tiny_vit(16, 1, 2, patch_size=patch).eval()
        with torch.no_grad():
            hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        assert hidden.shape == (2, tokens, 16)
    with pytest.raises(ValueError, match="patch_size"):
        tiny_vit(16, 1, 2, patch_size=5)
