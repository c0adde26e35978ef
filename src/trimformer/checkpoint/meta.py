"""The checkpoint format's metadata: constants, reading and validating ``trimformer.json`` (and the old
``image_classifier.json``), file digests. See :mod:`trimformer.checkpoint`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from trimformer import __version__
from trimformer.io_utils import file_sha256
from trimformer.pruned import TokenPrunedModel

FORMAT_VERSION = 2


READABLE_FORMATS = (1, 2)


META_FILE = "trimformer.json"


WEIGHTS_FILE = "model.safetensors"


LEGACY_META_FILE = "image_classifier.json"


TEXT_MODEL_CLASSES = ("BertForSequenceClassification", "RobertaForSequenceClassification", "BertModel",
                      "RobertaModel")


VISION_MODEL_CLASSES = ("ViTForImageClassification", "DeiTForImageClassification",
                        "DeiTForImageClassificationWithTeacher", "Dinov2ForImageClassification", "ViTModel",
                        "DeiTModel", "Dinov2Model")


CNN_MODEL_CLASSES = ("MobileNetCNN",)


_TRANSFORMERS_CLASSES = TEXT_MODEL_CLASSES + VISION_MODEL_CLASSES


_MODEL_CLASSES = _TRANSFORMERS_CLASSES + CNN_MODEL_CLASSES


RESERVED_KEYS = ("format_version", "trimformer_version", "transformers_version", "torch_version", "model_class",
                 "model_config", "method", "method_config", "mode", "quant_config", "batchnorm_folded", "files",
                 "legacy_format")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt."""


def label_names(model: TokenPrunedModel) -> list[str]:
    """Class names of a wrapped classifier, in label-id order."""
    config = model.model.config
    return [config.id2label[i] for i in range(config.num_labels)]


def is_pruned_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a ``trimformer.json`` checkpoint (any model, pruned or not)."""
    return (Path(path) / META_FILE).is_file()


def is_checkpoint(path: str | Path) -> bool:
    """Whether :func:`load` reads ``path``: a ``trimformer.json`` folder or an old ``image_classifier.json`` one."""
    return is_pruned_checkpoint(path) or (Path(path) / LEGACY_META_FILE).is_file()


def check_output_path(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` if a checkpoint may be written there: a new path in a writable folder, or, with ``overwrite``, a
    folder trimformer itself wrote (which is then replaced). Anything else (a file, a folder of the user's, an
    existing checkpoint without ``overwrite``) is refused, so that a save never deletes what it should not."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not (path.is_dir() and not path.is_symlink() and is_checkpoint(path)):
            what = ("a symbolic link" if path.is_symlink() else
                    "a folder that is not a trimformer checkpoint" if path.is_dir() else "a file")
            raise CheckpointError(f"{path} exists and is {what}: trimformer replaces only checkpoints it wrote. "
                                  "Choose another output path, or move it away yourself")
        if not overwrite:
            raise CheckpointError(f"{path} already holds a trimformer checkpoint; pass --overwrite (overwrite=True "
                                  "in Python) to replace it, or choose another output path")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        what = "not a folder" if not ancestor.is_dir() else "not writable"
        raise CheckpointError(f"cannot write {path}: {ancestor} is {what}; choose another output path")
    return path


def model_task(model_class: str) -> str:
    """"text" or "vision" for a supported model class."""
    if model_class in TEXT_MODEL_CLASSES:
        return "text"
    if model_class in VISION_MODEL_CLASSES or model_class in CNN_MODEL_CLASSES:
        return "vision"
    raise ValueError(f"model class {model_class!r} is not supported (one of {', '.join(_MODEL_CLASSES)})")


def _is_classifier(model_class: str) -> bool:
    return model_class in CNN_MODEL_CLASSES or "For" in model_class


def _common_meta(model_class: str, num_outputs: int, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The version keys and the validated ``extra`` (resolution, label_names and the caller's own keys)."""
    extra = dict(extra or {})
    reserved = sorted(k for k in extra if k in RESERVED_KEYS)
    if reserved:
        raise ValueError(f"extra keys {reserved} are written by trimformer.save itself; remove them")
    if "resolution" in extra:
        res = extra["resolution"]
        if isinstance(res, bool) or not isinstance(res, int) or res < 1:
            raise ValueError(f"resolution must be a positive int (pixels), got {res!r}")
    if "label_names" in extra:
        names = extra["label_names"]
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"label_names must be a list of strings, got {names!r}")
        if _is_classifier(model_class) and len(names) != num_outputs:
            raise ValueError(f"label_names must name the model's {num_outputs} outputs, got {len(names)}: {names}")
        extra["label_names"] = list(names)
    return {
        "format_version": FORMAT_VERSION,
        "trimformer_version": __version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model_class": model_class,
        **extra,
    }


def read_meta(path: str | Path) -> dict[str, Any]:
    """The validated metadata of a checkpoint folder (format 1 or 2, or an old ``image_classifier.json`` one,
    given in the format-2 layout with ``legacy_format`` set); no weights are read."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} not found")
    if not (path / META_FILE).is_file():
        if (path / LEGACY_META_FILE).is_file():
            return _read_legacy_meta(path)
        raise CheckpointError(f"{path} holds no {META_FILE} (nor an old {LEGACY_META_FILE}): not a trimformer "
                              "checkpoint; write one with trimformer.save")
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / META_FILE} is unreadable ({err}); re-create the checkpoint") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META_FILE} is unreadable (not a JSON object); re-create the checkpoint")
    version = meta.get("format_version")
    if version not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: checkpoint format {version!r} is not supported by trimformer {__version__} "
                              f"(it reads formats {', '.join(map(str, READABLE_FORMATS))}); "
                              + ("upgrade trimformer" if isinstance(version, int) and version > FORMAT_VERSION
                                 else "re-create the checkpoint with trimformer.save"))
    model_class = meta.get("model_class")
    if model_class not in _MODEL_CLASSES or (version == 1 and model_class in CNN_MODEL_CLASSES):
        raise CheckpointError(f"{path}: model class {model_class!r} is not supported")
    if not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{path / META_FILE} has no model_config; re-create the checkpoint")
    _check_files(path, meta)
    _check_types(path / META_FILE, meta)
    return meta


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


_FIELD_CHECKS = (  # key, test of a present value, what it must be
    ("method", lambda v: isinstance(v, str), "a method name (string)"),
    ("method_config", lambda v: isinstance(v, dict), "an object (the method's config)"),
    ("mode", lambda v: v in ("packed", "masked"), "'packed' or 'masked'"),
    ("quant_config", lambda v: v is None or isinstance(v, dict), "an object (the quantization recipe) or null"),
    ("batchnorm_folded", lambda v: isinstance(v, bool), "true or false"),
    ("resolution", _is_pos_int, "a positive integer (pixels)"),
    ("label_names", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of strings"),
)


def _check_types(where: Path, meta: dict[str, Any]) -> None:
    """Each known key that is present has its type (a hand-edited or foreign file fails here, not in a traceback)."""
    for key, test, must in _FIELD_CHECKS:
        if key in meta and not test(meta[key]):
            raise CheckpointError(f"{where}: {key} must be {must}, got {meta[key]!r}; re-create the checkpoint")


def _read_legacy_meta(path: Path) -> dict[str, Any]:
    """An old ``image_classifier.json`` record (format 1, kinds "cnn" and "hf") in the format-2 layout."""
    where = path / LEGACY_META_FILE
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where} is unreadable ({err}); re-create the checkpoint") from err
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} is unreadable (not a JSON object); re-create the checkpoint")
    if record.get("format_version") != 1:
        raise CheckpointError(f"{where}: image-classifier format {record.get('format_version')!r} is not supported "
                              "(only its format 1 is read); re-create the checkpoint with trimformer.save")
    kind = record.get("kind")
    if kind == "cnn":
        model_class, model_config = "MobileNetCNN", record.get("config")
    elif kind == "hf":
        model_class = record.get("model_class")
        if model_class not in _TRANSFORMERS_CLASSES:
            raise CheckpointError(f"{path}: model class {model_class!r} is not supported")
        try:  # written by save_pretrained next to the weights; read as plain JSON
            model_config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path / 'config.json'} is missing or unreadable ({err}); re-create the "
                                  "checkpoint") from err
    else:
        raise CheckpointError(f"{where}: kind {kind!r} is not one of 'cnn', 'hf'")
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{where} has no model config; re-create the checkpoint")
    meta = {k: v for k, v in record.items() if k not in ("format_version", "kind", "model_class", "config")}
    meta.update(format_version=1, legacy_format=LEGACY_META_FILE, model_class=model_class, model_config=model_config,
                method="dense", method_config={})
    if not meta.get("files"):
        raise CheckpointError(f"{where} lists no weight files; re-create the checkpoint")
    _check_files(path, meta)
    _check_types(where, meta)
    return meta


def _check_files(path: Path, meta: dict[str, Any]) -> None:
    files = meta.get("files")
    if files is None:
        return
    if (not isinstance(files, dict) or not files
            or not all(isinstance(n, str) and Path(n).name == n and n.endswith(".safetensors") for n in files)
            or not all(isinstance(d, str) for d in files.values())):
        raise CheckpointError(f"{path}: the metadata's files record {files!r} is invalid; re-create the checkpoint")


def _verify_files(path: Path, meta: dict[str, Any]) -> None:
    for name, digest in (meta.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: weight file {name} is missing; re-create the checkpoint")
        if file_sha256(file) != digest:
            raise CheckpointError(
                f"{path}: weight file {name} is corrupt (its sha256 differs from the one recorded at save); "
                "re-create the checkpoint. If its weights were rewritten on purpose, record the new digest in "
                f"the files entry of its metadata (or load with verify=False)")


def checkpoint_task(path: str | Path) -> str | None:
    """"text" or "vision" for a checkpoint folder (its metadata says), None for anything else."""
    if not is_checkpoint(path):
        return None
    return model_task(read_meta(path)["model_class"])
