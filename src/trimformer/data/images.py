"""Offline image data: Fashion-MNIST (Debian ``dataset-fashion-mnist``) and users' own image folders.

Both datasets yield ``(pixel_values, label)`` with ``pixel_values`` float32 ``(3, R, R)``, resized to the
requested resolution and normalised with the ImageNet mean/std expected by DINOv2, and ``label`` an
int64 scalar tensor, so ``torch.utils.data.DataLoader`` batches them as ``(B, 3, R, R)`` and ``(B,)``.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from trimformer.core.pixels import to_unit_range

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "dataset-fashion-mnist"
FASHION_MNIST_ENV = "TRIMFORMER_FASHION_MNIST"  # folder of the idx .gz files, overriding the Debian path
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})  # without Pillow's list (see image_extensions)
ARRAY_EXTENSIONS = frozenset({".npy"})
_EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class SkippedFilesWarning(UserWarning):
    """Files in an image folder that are not images trimformer reads (listed in the message)."""


def image_extensions() -> frozenset[str]:
    """Every file extension Pillow opens (PNG, JPEG, TIFF, BMP, GIF, WebP, ...), or PNG/JPEG without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return IMAGE_EXTENSIONS
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an idx file (``.gz`` or plain) of unsigned bytes into a uint8 tensor of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: idx element type 0x{type_code:02x} is not supported (only unsigned byte)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header shape {shape} needs {expected} bytes, file has {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=_IDX_DTYPES[type_code], offset=header).reshape(shape)
    return torch.from_numpy(array.copy())


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` ("train": 60k, "test": 10k) as uint8 images (N, 28, 28) and labels (N,)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    folder = Path(root) if root is not None else Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    paths = [folder / name for name in FASHION_MNIST_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {missing}. Install the Debian package {FASHION_MNIST_APT} "
            f"(apt-get install -y {FASHION_MNIST_APT}), or pass root= (or set ${FASHION_MNIST_ENV} to) a folder "
            "holding the idx .gz files."
        )
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Inconsistent Fashion-MNIST files: images {tuple(images.shape)}, labels {tuple(labels.shape)}"
        )
    return images, labels


def to_model_input(image: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Image (C, H, W), C in {1, 3} -> normalised float32 (3, R, R); R = H = W if None. Pixels: uint8 (0..255),
    uint16 (0..65535) or floats in [0, 1] (:func:`~trimformer.core.pixels.to_unit_range`)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape (1 or 3, H, W), got {tuple(image.shape)}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"empty image of shape {tuple(image.shape)}")
    x = to_unit_range(image)
    if resolution is not None:
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if tuple(x.shape[1:]) != (resolution, resolution):
            x = F.interpolate(
                x[None], size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
            )[0]
    x = x.expand(3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).contiguous()


def image_collate(items: list[tuple[torch.Tensor, torch.Tensor | int]]) -> dict[str, torch.Tensor]:
    """(pixels, label) pairs -> {"pixel_values": [B, 3, H, W], "labels": long [B]}."""
    pixels = torch.stack([p for p, _ in items])
    labels = torch.stack([torch.as_tensor(y, dtype=torch.long) for _, y in items])
    return {"pixel_values": pixels, "labels": labels}


def grayscale_batch_to_inputs(images: torch.Tensor, resolution: int | None, chunk: int = 4096) -> torch.Tensor:
    """uint8 / uint16 (or [0, 1] float) images [N, H, W] -> normalised float32 [N, 3, R, R], the batched form of
    :func:`to_model_input`."""
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got {tuple(images.shape)}")
    out = []
    for start in range(0, images.shape[0], chunk):
        x = to_unit_range(images[start:start + chunk], "images")[:, None]  # [n, 1, H, W]
        if resolution is not None and tuple(x.shape[2:]) != (resolution, resolution):
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        out.append((x - mean) / std)
    return torch.cat(out)


class GrayscaleImageDataset(Dataset):
    """Grayscale images (N, H, W) + labels, served as normalised 3-channel (3, R, R) tensors; pixels uint8, uint16
    or floats in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, resolution: int | None = 112) -> None:
        if images.ndim != 3:
            raise ValueError(f"images must be (N, H, W), got {tuple(images.shape)}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be (N,) with N={images.shape[0]}, got {tuple(labels.shape)}")
        if images.shape[0] == 0:
            raise ValueError("no images")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.resolution = resolution

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_model_input(self.images[index][None], self.resolution), self.labels[index]


class FashionMNIST(GrayscaleImageDataset):
    """Fashion-MNIST from the Debian package, resized (default 112 px: 8x8 patches of 14 px)."""

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        split: str = "train",
        resolution: int | None = 112,
        root: str | os.PathLike[str] | None = None,
        limit: int | None = None,
    ) -> None:
        images, labels = load_fashion_mnist(split, root)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        super().__init__(images, labels, resolution)
        self.split = split


class ImageFolderDataset(Dataset):
    """Users' own images in ``root/<class name>/<file>``; classes sorted by name.

    Image files are every format Pillow opens (see :func:`load_image` for the value ranges); ``.npy`` files hold
    arrays shaped (H, W), (H, W, C) or (C, H, W) with C in {1, 3}: uint8, uint16 or floats in [0, 1]. With
    ``resolution=None`` every image must already have the size of the first one; otherwise images are resized to
    ``resolution`` x ``resolution``. Other files in the class folders are skipped and listed in a
    :class:`SkippedFilesWarning` (hidden files, such as ``.DS_Store``, silently); problems with the images
    themselves (empty folders, corrupt or unreadable files, size mismatch, NaN) raise errors naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        resolution: int | None = 224,
        extensions: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        allowed = (
            {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions} if extensions else None
        )
        allowed = allowed or (image_extensions() | ARRAY_EXTENSIONS)
        self.classes = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not self.classes:
            raise ValueError(
                f"{self.root} has no class subfolders (expected root/<class name>/<image files>)"
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        for name in self.classes:
            files = []
            for p in sorted((self.root / name).iterdir()):
                if p.name.startswith("."):
                    continue
                if not p.is_file():
                    self.skipped.append((p, "a folder (class folders are one level deep)" if p.is_dir()
                                         else "not a regular file"))
                elif p.suffix.lower() not in allowed:
                    self.skipped.append((p, f"extension {p.suffix or '(none)'!r} is not an image type read here"))
                else:
                    files.append(p)
            if not files:
                raise ValueError(
                    f"class folder {self.root / name} holds no images ({', '.join(sorted(allowed))})"
                )
            self.samples.extend((p, self.class_to_idx[name]) for p in files)
        if self.skipped:
            shown = "; ".join(f"{p.relative_to(self.root)}: {why}" for p, why in self.skipped[:10])
            more = f"; and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            warnings.warn(f"{self.root}: skipped {len(self.skipped)} file(s) that are not images: {shown}{more}",
                          SkippedFilesWarning, stacklevel=2)
        if any(p.suffix.lower() not in ARRAY_EXTENSIONS for p, _ in self.samples):
            _require_pil()
        self.resolution = resolution
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[index]
        image = load_image(path)
        if self.resolution is None:
            size = (int(image.shape[1]), int(image.shape[2]))
            if self._size is None:
                self._size = _first_size(self.samples[0][0]) if index != 0 else size
            if size != self._size:
                raise ValueError(
                    f"{path}: image size {size[0]}x{size[1]} differs from {self._size[0]}x{self._size[1]}; "
                    "pass resolution= to resize all images"
                )
        try:
            pixel_values = to_model_input(image, self.resolution)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return pixel_values, torch.tensor(label, dtype=torch.int64)


def _require_pil() -> object:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("Reading PNG/JPEG images needs Pillow: pip install Pillow") from exc
    return Image


def _upright(img):
    """The image as a viewer shows it: a camera's EXIF orientation tag (rotated or mirrored) applied to the pixels."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def _first_size(path: Path) -> tuple[int, int]:
    image = load_image(path)
    return int(image.shape[1]), int(image.shape[2])


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read one image file as float32 (C, H, W) in [0, 1], C in {1, 3}.

    Pillow formats by mode: 8-bit modes (1, L, P, LA, RGB, RGBA, CMYK, YCbCr...) are converted to RGB (alpha
    dropped, as torchvision does) and divided by 255; 16-bit grayscale (``I;16*``, and ``I`` from a 16-bit PNG or
    TIFF) by 65535; 32-bit integer ``I`` by its bit depth; 32-bit float ``F`` is kept and must lie in [0, 1].
    The first frame of an animation is read. ``.npy`` arrays: see :func:`~trimformer.core.pixels.to_unit_range`.
    A corrupt or unreadable file raises ValueError naming it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ARRAY_EXTENSIONS:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read array ({exc})") from exc
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"{path}: array dtype {array.dtype} is not numeric")
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3 and array.shape[-1] in (1, 3) and array.shape[0] not in (1, 3):
            array = np.moveaxis(array, -1, 0)
        if array.ndim != 3 or array.shape[0] not in (1, 3) or 0 in array.shape:
            raise ValueError(
                f"{path}: expected (H, W), (H, W, C) or (C, H, W) with C in 1/3, got {array.shape}"
            )
        return to_unit_range(np.ascontiguousarray(array), str(path)).contiguous()
    image_module = _require_pil()
    try:
        with image_module.open(path) as img:  # type: ignore[attr-defined]
            img.load()
            array = _pillow_pixels(_upright(img), path)
    except (OSError, SyntaxError, ValueError, image_module.DecompressionBombError) as exc:  # type: ignore[attr-defined]
        # Pillow raises these for truncated, corrupt or absurdly large files
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc}); the file is corrupt or not "
                         "an image: replace or remove it") from exc
    if 0 in array.shape:
        raise ValueError(f"{path}: empty image {array.shape}")
    return to_unit_range(array, str(path)).contiguous()


def _pillow_pixels(img, path: Path) -> np.ndarray:
    """A loaded Pillow image -> (C, H, W) array whose dtype says its range (uint8, uint16 or float in [0, 1])."""
    mode = img.mode
    if mode in _EIGHT_BIT_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(img).astype(np.uint16)[None]
    if mode == "I":
        values = np.asarray(img, dtype=np.int64)
        if values.size and values.min() < 0:
            raise ValueError(f"{path}: signed 32-bit pixels with negative values have no intensity range; save the "
                             "image as 8- or 16-bit, or as floats in [0, 1]")
        bits = _integer_bit_depth(img)
        return (values.astype(np.float64) / (2.0 ** bits - 1)).astype(np.float32)[None]
    if mode == "F":
        return np.asarray(img, dtype=np.float32)[None]
    raise ValueError(f"{path}: Pillow image mode {mode!r} is not supported; convert the image to RGB or grayscale")


def _integer_bit_depth(img) -> int:
    """Bits per sample of a Pillow ``I`` image: PNG stores at most 16, TIFF says, anything else is 32-bit."""
    if img.format == "PNG":
        return 16
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0]
    return int(bits) if bits else 32


def load_image_data(data: str, split: str, resolution: int, limit: int | None = None, seed: int = 0) -> Dataset:
    """``fashion_mnist`` (train/test) or an ImageFolder directory; ``limit``: a seeded subset."""
    if data == "fashion_mnist":
        dataset: Dataset = FashionMNIST(split, resolution)
    elif Path(data).is_dir():
        dataset = ImageFolderDataset(data, resolution)
    else:
        raise ValueError(f"unknown image data {data!r}: use 'fashion_mnist' or a folder root/<class>/<images>")
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None and limit < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        dataset = Subset(dataset, idx.tolist())
    return dataset


def pixel_batches(data: Dataset, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole dataset in order as (pixel_values [B, 3, H, W], labels [B]) batches."""
    n = len(data)  # type: ignore[arg-type]
    batches = (image_collate([data[i] for i in range(start, min(start + batch_size, n))])
               for start in range(0, n, batch_size))
    return [(b["pixel_values"], b["labels"]) for b in batches]
