"""Save and load trained image classifiers: the small CNN and transformers' Dinov2ForImageClassification.

A checkpoint is a folder::

    image_classifier.json   kind ("cnn" | "hf"), model class, CNN config, resolution, label names,
                            training recipe and any other metadata, sha256 of each weight file
    model.safetensors       weights (kind "cnn": the state dict; kind "hf": written by save_pretrained,
    config.json             together with the transformers config)

The folder is built next to the target and swapped in only once complete
(:func:`trimformer.io_utils.atomic_write_dir`), so an interrupted save leaves the previous checkpoint
intact. Loading checks the JSON, the weight hashes and the state-dict keys, and raises ``ValueError``
naming the path and what to do when anything is missing or corrupt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trimformer.io_utils import atomic_write_dir, atomic_write_json, file_sha256
from trimformer.vision.cnn import CNNConfig, MobileNetCNN

META_FILE = "image_classifier.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
KINDS = ("cnn", "hf")
REQUIRED_META = ("resolution", "label_names")
_RESERVED = ("format_version", "kind", "model_class", "config", "files")


def _kind_of(model: nn.Module) -> str:
    if isinstance(model, MobileNetCNN):
        return "cnn"
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return "hf"
    raise TypeError(
        f"save_image_classifier handles MobileNetCNN and transformers models, got {type(model).__name__}"
    )


def _check_meta(meta: dict[str, Any], num_labels: int) -> dict[str, Any]:
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"meta must contain {list(REQUIRED_META)}; missing {missing}")
    reserved = [k for k in _RESERVED if k in meta]
    if reserved:
        raise ValueError(f"meta keys {reserved} are written by save_image_classifier itself; remove them")
    labels = list(meta["label_names"])
    if len(labels) != num_labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"label_names must be {num_labels} strings (one per model output), got {labels}")
    resolution = meta["resolution"]
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    try:  # everything must survive JSON exactly as given (no silent str() of odd objects)
        return json.loads(json.dumps({**meta, "label_names": labels}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable without NaN/inf: {exc}") from exc


def save_image_classifier(model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write ``model`` (MobileNetCNN or a transformers image classifier) and ``meta`` to the folder ``path``.

    ``meta`` needs ``resolution`` (input side in pixels) and ``label_names`` (one per output); add the
    training ``recipe`` and results as you like (JSON values). An existing checkpoint is replaced
    atomically. Returns the folder path.
    """
    path = Path(path)
    kind = _kind_of(model)
    num_labels = model.config.num_classes if kind == "cnn" else model.config.num_labels
    meta = _check_meta(meta, num_labels)

    def write(tmp: Path) -> None:
        if kind == "cnn":
            state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            config: dict[str, Any] | None = model.config.to_dict()
        else:
            model.save_pretrained(tmp)
            config = None  # in config.json, written by save_pretrained
        weight_files = sorted(p.name for p in tmp.iterdir() if p.suffix == ".safetensors")
        if not weight_files:
            raise RuntimeError(f"no safetensors weights were written for {type(model).__name__}")
        record = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "model_class": type(model).__name__,
            "config": config,
            "files": {name: file_sha256(tmp / name) for name in weight_files},
            **meta,
        }
        atomic_write_json(tmp / META_FILE, record)  # written last
        os.chmod(tmp, 0o755)  # mkdtemp makes owner-only folders
        for file in tmp.iterdir():
            os.chmod(file, 0o644)

    atomic_write_dir(path, write)
    return path


def _fail(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is not a usable image-classifier checkpoint: {problem}. "
        "Re-create it with save_image_classifier (e.g. re-run benchmarks/train_fmnist_cnn.py or "
        "benchmarks/finetune_vit_fmnist.py with --out pointing there)."
    )


def read_image_classifier_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON record, validated (no weights are read)."""
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "the folder does not exist")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise _fail(path, f"{META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"{META_FILE} cannot be read ({exc})") from exc
    if not isinstance(meta, dict):
        raise _fail(path, f"{META_FILE} does not hold a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if meta.get("kind") not in KINDS:
        raise _fail(path, f"kind {meta.get('kind')!r} is not one of {KINDS}")
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise _fail(path, f"{META_FILE} lists no weight files")
    return meta


def _verify_files(path: Path, files: dict[str, str]) -> None:
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise _fail(path, f"weight file {name} is missing")
        if file_sha256(file) != digest:
            raise _fail(path, f"weight file {name} is corrupt (sha256 differs from the one recorded at save)")


def load_image_classifier(
    path: str | os.PathLike[str], verify: bool = True, **hf_kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_image_classifier`; returns ``(model in eval mode, meta)``.

    ``verify`` checks the weight files' sha256 against the record. Extra keyword arguments go to
    ``from_pretrained`` for kind "hf" (e.g. ``attn_implementation="eager"`` to get attention maps).
    """
    path = Path(path)
    meta = read_image_classifier_meta(path)
    if verify:
        _verify_files(path, meta["files"])
    if meta["kind"] == "cnn":
        if hf_kwargs:
            raise TypeError(f"keyword arguments {sorted(hf_kwargs)} only apply to transformers checkpoints")
        try:
            config = CNNConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as exc:
            raise _fail(path, f"the CNN config is invalid ({exc})") from exc
        model = MobileNetCNN(config)
        try:
            state = load_file(str(path / WEIGHTS_FILE))
        except Exception as exc:  # safetensors raises its own error types
            raise _fail(path, f"{WEIGHTS_FILE} cannot be read ({exc})") from exc
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise _fail(path, f"the weights do not fit the recorded config ({exc})") from exc
    else:
        import transformers

        cls = getattr(transformers, str(meta.get("model_class")), None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
            raise _fail(path, f"model class {meta.get('model_class')!r} is not a transformers model")
        try:
            model, info = cls.from_pretrained(path, output_loading_info=True, **hf_kwargs)
        except Exception as exc:  # transformers raises many types (OSError, ValueError, SafetensorError...)
            raise _fail(path, f"transformers cannot load it ({type(exc).__name__}: {exc})") from exc
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            raise _fail(path, f"the weights do not fit the model ({bad})")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise _fail(path, f"tensor {name} holds NaN or infinite values")
    return model.eval(), meta
