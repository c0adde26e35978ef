"""Vision token pruning end to end: load an image classifier, build a method, evaluate and time it.

Models: a trimformer checkpoint (pruned or dense, ``trimformer.json``), a fine-tuned image classifier saved
by :func:`trimformer.vision.checkpoint.save_image_classifier`, or any transformers ViT/DeiT/Dinov2
classifier folder / hub name. Data: ``fashion_mnist`` (offline, Debian package) or an ImageFolder directory
(``root/<class>/<image>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from trimformer.checkpoint import VISION_MODEL_CLASSES, is_pruned_checkpoint, load_pruned
from trimformer.data.images import image_collate
from trimformer.methods import registered_methods
from trimformer.pruned import TokenPrunedModel

VISION_METHODS = tuple(s.name for s in registered_methods() if "vision" in s.tasks)
DEFAULT_RESOLUTION = 112


def load_vision_model(path: str | Path) -> tuple[TokenPrunedModel, dict[str, Any]]:
    """Any image classifier trimformer can run -> (TokenPrunedModel in eval mode, metadata with resolution)."""
    path_s = str(path)
    if is_pruned_checkpoint(path_s):
        model, meta = load_pruned(path_s)
        if meta["model_class"] not in VISION_MODEL_CLASSES:
            raise ValueError(f"{path_s} holds a text model ({meta['model_class']}); use the text commands")
        return model, meta
    if (Path(path_s) / "image_classifier.json").is_file():
        from trimformer.vision.checkpoint import load_image_classifier

        model, meta = load_image_classifier(path_s)
        if meta.get("kind") != "hf":
            raise ValueError(f"{path_s} is a {meta.get('kind')} model; token pruning needs a vision transformer")
        return TokenPrunedModel(model, None).eval(), {**meta, "method": "dense"}
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(path_s, attn_implementation="sdpa")
    except OSError as err:
        raise ValueError(f"cannot load image model {path_s!r}: {err}") from err
    return TokenPrunedModel(model, None).eval(), {"method": "dense"}


def model_resolution(model: TokenPrunedModel, meta: dict[str, Any]) -> int:
    """Input resolution recorded with the model (trimformer/vision checkpoints), else the model config's."""
    res = meta.get("resolution") or meta.get("recipe", {}).get("resolution")
    return int(res) if res else int(model.model.config.image_size)


def load_image_data(data: str, split: str, resolution: int, limit: int | None = None, seed: int = 0) -> Dataset:
    """``fashion_mnist`` (train/test) or an ImageFolder directory; ``limit``: a seeded subset."""
    if data == "fashion_mnist":
        from trimformer.data.images import FashionMNIST

        dataset: Dataset = FashionMNIST(split, resolution)
    elif Path(data).is_dir():
        from trimformer.data.images import ImageFolderDataset

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
