"""Loading any model trimformer runs, with its task (text or vision) read from the checkpoint where it can be."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimformer.checkpoint import (
    CNN_MODEL_CLASSES,
    CheckpointError,
    checkpoint_task,
    is_checkpoint,
    load_model,
    load_pruned,
    read_meta,
)
from trimformer.checkpoint.sources import check_finite, from_pretrained, require_local
from trimformer.pruned import TokenPrunedModel

TASKS = ("text", "vision")


@dataclass
class Loaded:
    """A model ready to run: the wrapper, its tokenizer (text) and the checkpoint's metadata."""

    model: TokenPrunedModel
    tokenizer: Any
    meta: dict[str, Any]

    @property
    def task(self) -> str:
        return self.model.adapter.task


_HF_VISION_TYPES = ("vit", "deit", "dinov2")


def _recorded_task(path: Path) -> tuple[str, str] | None:
    """(task, where it was read) for a trimformer checkpoint (its metadata) or a transformers model folder (its
    config.json's ``model_type``: ViT/DeiT/Dinov2 are vision); None where nothing says (a hub name)."""
    found = checkpoint_task(path)  # trimformer.json or an old image_classifier.json
    if found is not None:
        return found, "the checkpoint"
    config = path / "config.json"
    if config.is_file():
        try:
            record = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{config} is unreadable ({err}); re-create or re-download the model") from err
        if not isinstance(record, dict) or not isinstance(record.get("model_type"), str):
            raise CheckpointError(f"{config} names no model_type (it is not a transformers model config); "
                                  "re-create or re-download the model")
        model_type = record["model_type"]
        return ("vision" if model_type in _HF_VISION_TYPES else "text"), f"its config: {model_type}"
    return None


def infer_task(path_or_name: str | Path, task: str | None = None) -> str:
    """The task of a model: read from a checkpoint's metadata or a model folder's config, else ``task`` (default
    text: a hub name says nothing until downloaded). An explicit ``task`` that contradicts the model is an error."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    recorded = _recorded_task(Path(str(path_or_name)))
    if recorded is None:
        require_local(path_or_name)  # a path-like name that does not exist fails here, before any hub look-up
        return task or "text"
    found, source = recorded
    if task is not None and task != found:
        raise ValueError(f"{path_or_name} holds a {found} model ({source}); drop --task {task}")
    return found


def load_any(path_or_name: str | Path, task: str | None = None, label_names: list[str] | None = None) -> Loaded:
    """Any model trimformer can run, text or vision (see :func:`infer_task`), in eval mode."""
    if infer_task(path_or_name, task) == "text":
        model, tokenizer, meta = load_model(path_or_name, label_names=label_names)
        return Loaded(model, tokenizer, meta)
    model, meta = load_vision_model(path_or_name)
    return Loaded(model, None, meta)


def load_vision_model(path: str | Path) -> tuple[TokenPrunedModel, dict[str, Any]]:
    """Any vision transformer trimformer can run -> (TokenPrunedModel in eval mode, metadata with resolution).

    A trimformer checkpoint (``trimformer.json``, or an old ``image_classifier.json`` folder), else a local folder
    or hub name of a transformers image classifier."""
    path_s = str(path)
    if is_checkpoint(path_s):
        model_class = read_meta(path_s)["model_class"]
        if model_class in CNN_MODEL_CLASSES:
            raise ValueError(f"{path_s} holds a {model_class} (a CNN); token pruning needs a vision transformer. "
                             "Load the CNN with trimformer.load")
        if checkpoint_task(path_s) != "vision":
            raise ValueError(f"{path_s} holds a text model ({model_class}); use the text commands")
        return load_pruned(path_s)
    from transformers import AutoModelForImageClassification

    model = from_pretrained(AutoModelForImageClassification.from_pretrained, path, "image model",
                            attn_implementation="sdpa")
    check_finite(dict(model.state_dict()), path_s)
    return TokenPrunedModel(model, None).eval(), {"method": "dense"}


def vision_config(path_or_name: str | Path) -> Any:
    """The transformers config of an image model folder or hub name (to check a resolution before loading)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path_or_name))
    except OSError as err:
        raise ValueError(f"cannot load image model {str(path_or_name)!r}: {err}") from err


def vision_classifier(path_or_name: str | Path, label_names: list[str]) -> Any:
    """A transformers image classifier to fine-tune on ``label_names`` (a new head where its classes differ), in
    train mode."""
    from transformers import AutoModelForImageClassification

    stored = vision_config(path_or_name)
    same = getattr(stored, "num_labels", None) == len(label_names) and \
        [stored.id2label.get(i) for i in range(len(label_names))] == list(label_names)
    kwargs = {} if same else {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                              "label2id": {n: i for i, n in enumerate(label_names)}, "ignore_mismatched_sizes": True}
    try:
        model = AutoModelForImageClassification.from_pretrained(str(path_or_name), attn_implementation="sdpa",
                                                                **kwargs)
    except OSError as err:
        raise ValueError(f"cannot load image model {str(path_or_name)!r}: {err}") from err
    return model.train()


def model_resolution(model: TokenPrunedModel, meta: dict[str, Any]) -> int:
    """Input resolution recorded with the model (trimformer/vision checkpoints), else the model config's."""
    res = meta.get("resolution") or meta.get("recipe", {}).get("resolution")
    return int(res) if res else int(model.model.config.image_size)
