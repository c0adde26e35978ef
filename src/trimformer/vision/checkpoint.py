"""Deprecated: the former image-classifier checkpoint API. Use ``trimformer.save`` / ``trimformer.load``.

trimformer has one checkpoint format (:mod:`trimformer.checkpoint`: ``trimformer.json`` + ``model.safetensors``)
for text and vision transformers, quantized models and the MobileNet-style CNN, and
:func:`trimformer.checkpoint.load` reads the old ``image_classifier.json`` folders too. What remains here:

- :func:`load_image_classifier`: an alias of ``trimformer.checkpoint.load`` (any checkpoint, old or new);
- :func:`save_image_classifier`: the old writer, kept only until its last callers outside the library move to
  ``trimformer.save`` (``benchmarks/train_tiny_vit.py``, ``benchmarks/gpu/transfer.py``'s test). It warns; do not
  use it in new code. This module goes away with it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from trimformer.checkpoint import LEGACY_META_FILE, WEIGHTS_FILE, load
from trimformer.io_utils import atomic_write_dir, atomic_write_json, file_sha256
from trimformer.vision.cnn import MobileNetCNN

META_FILE = LEGACY_META_FILE
__all__ = ["META_FILE", "WEIGHTS_FILE", "load_image_classifier", "save_image_classifier"]


def load_image_classifier(path: str | os.PathLike[str], verify: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Deprecated alias of ``trimformer.checkpoint.load`` (which reads old and new checkpoints alike)."""
    return load(path, verify=verify)


def save_image_classifier(model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Deprecated: writes the old ``image_classifier.json`` format. Use ``trimformer.save(model, path,
    resolution=..., label_names=..., extra=...)``, which ``trimformer.load`` reads back the same way."""
    warnings.warn("save_image_classifier writes the old image_classifier.json format; use trimformer.save "
                  "(trimformer.json, read by trimformer.load)", DeprecationWarning, stacklevel=2)
    path = Path(path)
    if isinstance(model, MobileNetCNN):
        kind, num_labels = "cnn", model.config.num_classes
    else:
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"save_image_classifier handles MobileNetCNN and transformers models, "
                            f"got {type(model).__name__}")
        kind, num_labels = "hf", model.config.num_labels
    if "resolution" not in meta or "label_names" not in meta:
        raise ValueError("meta must contain ['resolution', 'label_names']")
    if len(meta["label_names"]) != num_labels:
        raise ValueError(f"label_names must be {num_labels} strings (one per model output)")
    meta = json.loads(json.dumps({**meta, "label_names": list(meta["label_names"])}, allow_nan=False))

    def write(tmp: Path) -> None:
        if kind == "cnn":
            state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        else:
            model.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.suffix == ".safetensors")
        atomic_write_json(tmp / META_FILE, {
            "format_version": 1, "kind": kind, "model_class": type(model).__name__,
            "config": model.config.to_dict() if kind == "cnn" else None,
            "files": {name: file_sha256(tmp / name) for name in files}, **meta})

    atomic_write_dir(path, write)
    return path
