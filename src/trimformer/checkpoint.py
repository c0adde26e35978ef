"""Saving and loading models: dense transformers checkpoints and trimformer's pruned format.

A pruned checkpoint is a folder with ``model.safetensors`` (all weights, learned thresholds included),
``trimformer.json`` (model class and config, method and its exact config, the training recipe, label
names) and the tokenizer files. Written atomically; read with safetensors only (no pickle).
A quantized model (``trimformer.quant.quantize_``, pruned or not) is stored in the same format with its
quantized weights bit-packed (``<layer>.weight.qpack.*`` tensors) and the ``quant_config`` in the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from trimformer import __version__
from trimformer.io_utils import atomic_write_dir, atomic_write_json
from trimformer.methods import method_named
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import config_from_dict, load_quantized_, pack_model

FORMAT_VERSION = 1
META_FILE = "trimformer.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_MODEL_CLASSES = ("BertForSequenceClassification", "RobertaForSequenceClassification", "BertModel",
                      "RobertaModel")
VISION_MODEL_CLASSES = ("ViTForImageClassification", "DeiTForImageClassification",
                        "DeiTForImageClassificationWithTeacher", "Dinov2ForImageClassification", "ViTModel",
                        "DeiTModel", "Dinov2Model")
_MODEL_CLASSES = TEXT_MODEL_CLASSES + VISION_MODEL_CLASSES


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt."""


def label_names(model: TokenPrunedModel) -> list[str]:
    """Class names of a wrapped classifier, in label-id order."""
    config = model.model.config
    return [config.id2label[i] for i in range(config.num_labels)]


def is_pruned_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def build_policy(method: str, method_config: dict[str, Any], num_layers: int):
    """The inference policy of a saved method (from the method registry), or None for a dense model."""
    if method == "dense":
        return None
    try:
        spec = method_named(method)
    except ValueError as err:
        raise CheckpointError(f"checkpoint: {err}") from err
    return spec.build_policy(spec.config_from_dict(method_config), num_layers)


def save_pruned(model: TokenPrunedModel, path: str | Path, tokenizer=None,
                extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and its tokenizer) atomically to the folder ``path``."""
    path = Path(path)
    policy = model.policy
    if not hasattr(getattr(model.model, "config", None), "to_dict"):
        raise ValueError(f"save_pruned saves transformers models; {type(model.model).__name__} has no transformers "
                         "config. Save model.model.state_dict() and model.policy.config().to_dict() yourself.")
    meta = {
        "format_version": FORMAT_VERSION,
        "trimformer_version": __version__,
        "transformers_version": transformers.__version__,
        "model_class": type(model.model).__name__,
        "model_config": model.model.config.to_dict(),
        "method": policy.method if policy is not None else "dense",
        "method_config": policy.config().to_dict() if policy is not None else {},
        "mode": model.mode,
        **(extra or {}),
    }
    # quantize_ records its recipe on the object it was given: the wrapper or the bare model
    quant_config = getattr(model, "trimformer_quant_config", None) or getattr(model.model, "trimformer_quant_config",
                                                                               None)
    if quant_config is not None:
        meta["quant_config"] = quant_config
        state = pack_model(model)
    else:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}

    def write(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        atomic_write_json(folder / META_FILE, meta)

    atomic_write_dir(path, write)
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / META_FILE} is unreadable ({err}); re-create the checkpoint") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format_version')} is not supported "
                              f"by trimformer {__version__} (expects {FORMAT_VERSION})")
    if meta.get("model_class") not in _MODEL_CLASSES:
        raise CheckpointError(f"{path}: model class {meta.get('model_class')!r} is not supported")
    return meta


def load_pruned(path: str | Path) -> tuple[TokenPrunedModel, dict[str, Any]]:
    """Load a pruned checkpoint written by :func:`save_pruned` -> (model in eval mode, metadata)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} not found")
    meta = _read_meta(path)
    config_dict = dict(meta["model_config"])
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = getattr(transformers, meta["model_class"])(config)
    policy = build_policy(meta["method"], meta["method_config"], config.num_hidden_layers)
    pruned = TokenPrunedModel(model, policy, mode=meta.get("mode", "packed"))
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path / WEIGHTS_FILE} is missing or corrupt ({err}); re-create it") from err
    if meta.get("quant_config") is not None:
        try:
            load_quantized_(pruned, config_from_dict(meta["quant_config"]), state, name_prefix="model.")
        except ValueError as err:
            raise CheckpointError(f"{path}: quantized weights cannot be restored ({err}); re-create it") from err
        return pruned.eval(), meta
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return pruned.eval(), meta


def load_model(path_or_name: str | Path, num_labels: int | None = None, label_names: list[str] | None = None):
    """Any model trimformer can run -> (TokenPrunedModel, tokenizer, metadata).

    Accepts a trimformer pruned checkpoint, or a local folder / hub name of a transformers BERT or
    RoBERTa model (a classification head is added when ``num_labels`` is given and missing).
    """
    if is_pruned_checkpoint(path_or_name):
        model, meta = load_pruned(path_or_name)
        if meta["model_class"] in VISION_MODEL_CLASSES:
            raise CheckpointError(f"{path_or_name} holds an image model ({meta['model_class']}); use "
                                  "--task vision (trimformer.vision_pipeline) for it")
        return model, AutoTokenizer.from_pretrained(str(path_or_name)), meta
    kwargs: dict[str, Any] = {}
    if label_names is not None:
        kwargs = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                  "label2id": {n: i for i, n in enumerate(label_names)}}
    elif num_labels is not None:
        kwargs = {"num_labels": num_labels}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path_or_name), attn_implementation="sdpa", ignore_mismatched_sizes=bool(kwargs), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path_or_name))
    except OSError as err:
        raise CheckpointError(f"cannot load model {path_or_name!r}: {err}") from err
    return TokenPrunedModel(model, None).eval(), tokenizer, {"method": "dense"}


def save_dense(model: torch.nn.Module, tokenizer, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save a fine-tuned transformers model (save_pretrained format) atomically."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if extra:
            atomic_write_json(folder / "trimformer_recipe.json", extra)

    atomic_write_dir(path, write)
    return Path(path)


def save(model: torch.nn.Module, path: str | Path, processor=None, extra: dict[str, Any] | None = None) -> Path:
    """``trimformer.save``: a pruned wrapper (any method, quantized or not) or a bare transformers model, with its
    tokenizer or image processor (``processor``), atomically to the folder ``path``."""
    wrapped = model if isinstance(model, TokenPrunedModel) else TokenPrunedModel(model)
    return save_pruned(wrapped, path, tokenizer=processor, extra=extra)


def load(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``trimformer.load`` -> (model in eval mode, metadata): a pruned or quantized checkpoint as a
    ``TokenPrunedModel``; a dense, unquantized one as the bare transformers model."""
    pruned, meta = load_pruned(path)
    if pruned.policy is None and not meta.get("quant_config"):
        return pruned.model, meta
    return pruned, meta
