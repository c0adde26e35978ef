"""Images: every format Pillow reads, with the right value range for its mode; files that are not images are
listed in a warning; corrupt files are errors naming them; integer pixel arrays and tensors given to the API are
scaled by their dtype's range, not read as 0..1 floats."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trimformer.data.images import GrayscaleImageDataset, ImageFolderDataset, load_image, to_model_input

RAMP16 = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)  # 0..63000


def test_a_16_bit_png_keeps_its_range(tmp_path: Path) -> None:
    Image.fromarray(RAMP16).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape[1:] == (8, 8)
    np.testing.assert_allclose(x[0].numpy(), RAMP16 / 65535.0, atol=1e-6)


def test_32_bit_integer_and_float_tiffs_keep_their_range(tmp_path: Path) -> None:
    ints = (np.arange(64, dtype=np.int64).reshape(8, 8) * 30_000_000).astype(np.int32)
    Image.fromarray(ints, mode="I").save(tmp_path / "i.tif")
    np.testing.assert_allclose(load_image(tmp_path / "i.tif")[0].numpy(), ints / (2.0**32 - 1), rtol=1e-6)
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(load_image(tmp_path / "f.tif")[0].numpy(), floats, atol=1e-7)
    Image.fromarray(floats * 255, mode="F").save(tmp_path / "f255.tif")
    with pytest.raises(ValueError, match=r"f255\.tif: float pixels span \[0, 255\]"):
        load_image(tmp_path / "f255.tif")


@pytest.mark.parametrize("mode,suffix", [("P", ".gif"), ("P", ".png"), ("LA", ".png"), ("RGBA", ".png"),
                                         ("CMYK", ".jpg"), ("CMYK", ".tif"), ("1", ".bmp"), ("L", ".webp"),
                                         ("RGB", ".ppm")])
def test_eight_bit_modes_read_as_rgb_in_0_1(tmp_path: Path, mode: str, suffix: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"a{suffix}"
    image.save(path, **({"lossless": True} if suffix == ".webp" else {}))
    with Image.open(path) as reread:
        expected = np.asarray(reread.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(load_image(path).numpy(), expected, atol=1e-6)


def test_files_that_are_not_images_are_listed_in_a_warning(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name / "0.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: skipped without a word
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not images: cat/notes\.txt: extension "):
        data = ImageFolderDataset(tmp_path, resolution=4)
    assert len(data) == 2
    (tmp_path / "cat" / "notes.txt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageFolderDataset(tmp_path, resolution=4)


def test_a_corrupt_image_is_an_error_naming_it(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    whole = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.png: cannot read image .*corrupt"):
        load_image(tmp_path / "cut.png")


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.bool_, 1.0)])
def test_integer_npy_arrays_are_scaled_by_their_dtype(tmp_path: Path, dtype, scale: float) -> None:
    values = np.random.default_rng(0).integers(0, int(scale) + 1, (6, 6)).astype(dtype)
    np.save(tmp_path / "a.npy", values)
    np.testing.assert_allclose(load_image(tmp_path / "a.npy")[0].numpy(), values.astype(np.float64) / scale,
                               atol=1e-6)


@pytest.mark.parametrize("array,match", [(np.full((4, 4), 200.0, np.float32), r"float pixels span \[200, 200\]"),
                                         (np.full((4, 4), 3, np.int64), "int64 pixels have no known range")])
def test_arrays_without_a_known_range_are_refused(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(ValueError, match=match):
        load_image(tmp_path / "a.npy")


def test_integer_tensors_given_to_the_api_are_normalised() -> None:
    pixels = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(to_model_input(pixels, None), to_model_input(pixels.float() / 255, None))
    wide = torch.from_numpy(pixels[:1].numpy().astype(np.uint16) * 257)  # the same image in 16 bits
    data = GrayscaleImageDataset(wide, torch.zeros(1), resolution=None)
    torch.testing.assert_close(data[0][0], to_model_input(pixels[:1].float() / 255, None))
    from trimformer.vision.cnn import CNNConfig, prepare_images

    config = CNNConfig()
    floats = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(prepare_images((floats * 255).round().to(torch.uint8), config),
                               prepare_images((floats * 255).round() / 255, config))
    with pytest.raises(ValueError, match=r"float pixels span"):
        prepare_images(floats * 255, config)


def test_a_photo_with_an_exif_rotation_is_read_upright(tmp_path: Path) -> None:
    """A phone photo stored sideways with orientation tag 6 ("rotate 90 clockwise to view") is read as viewed."""
    stored = np.zeros((4, 6, 3), dtype=np.uint8)  # H=4, W=6 as stored
    stored[0, 0] = 255  # a white pixel at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=100, subsampling=0)
    image = load_image(path)
    assert tuple(image.shape) == (3, 6, 4)  # viewed: 6 high, 4 wide
    assert image[:, 0, -1].min() > 0.8  # the stored top-left is now the top-right
    assert image[:, -1, 0].max() < 0.2
