"""Image tensors for trimformer's CNNs: Fashion-MNIST or an image folder as one normalised (N, C, S, S) tensor.

The transformer image datasets (:mod:`trimformer.data.images`) serve 3-channel ImageNet-normalised items; a CNN
of :mod:`trimformer.vision.cnn` / :mod:`trimformer.vision.cnn_zoo` takes its own channels and its own
normalisation ``(x - mean) / std`` of pixels in [0, 1] (:func:`trimformer.vision.cnn.prepare_images`), and its
structured-pruning methods take whole tensors (``(images, labels)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trimformer.core.pixels import to_unit_range
from trimformer.data.batching import sample_indices
from trimformer.data.images import FASHION_MNIST_CLASSES, ImageFolderDataset, load_fashion_mnist, load_image


@dataclass(frozen=True)
class CNNInput:
    """What a CNN expects: ``channels`` (1 or 3), square ``size`` in pixels, and the normalisation of [0, 1]
    pixels."""

    channels: int
    size: int
    mean: float
    std: float


def _to_input(x: torch.Tensor, spec: CNNInput) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) -> (N, spec.channels, spec.size, spec.size), normalised."""
    if x.shape[1] != spec.channels:
        x = x.mean(1, keepdim=True) if spec.channels == 1 else x.expand(-1, spec.channels, -1, -1)
    if tuple(x.shape[2:]) != (spec.size, spec.size):
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False, antialias=True)
    return ((x - spec.mean) / spec.std).contiguous()


def load_cnn_images(data: str, split: str, spec: CNNInput, limit: int | None = None,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images (N, C, S, S) float32 normalised for ``spec``, labels (N,) int64, class names) of ``data``:
    ``fashion_mnist`` (its ``split``, 'train' or 'test') or an image folder ``root/<class>/<images>`` (any split:
    the folder is the split). ``limit``: a seeded random subset of that many images."""
    if spec.channels not in (1, 3):
        raise ValueError(f"a CNN input has 1 or 3 channels, got {spec.channels}")
    if data == "fashion_mnist":
        images, labels = load_fashion_mnist(split)
        keep = sample_indices(len(labels), limit, seed) if limit is not None else None
        if keep is not None:
            images, labels = images[keep], labels[keep]
        x = to_unit_range(images, "Fashion-MNIST images")[:, None]
        return _to_input(x, spec), labels.long(), list(FASHION_MNIST_CLASSES)
    folder = ImageFolderDataset(data, resolution=None)  # FileNotFoundError / ValueError name the problem
    samples = folder.samples
    if limit is not None:
        samples = [samples[i] for i in sample_indices(len(samples), limit, seed)]
    batch = []
    for path, _ in samples:
        image = load_image(path)
        if image.shape[0] not in (1, 3):
            raise ValueError(f"{path}: expected 1 or 3 channels, got {image.shape[0]}")
        batch.append(_to_input(image[None].float(), spec))
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return torch.cat(batch), labels, list(folder.classes)
