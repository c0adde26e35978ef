"""Saving and loading checkpoints (:mod:`trimformer.checkpoint`): transformers models (pruned, quantized or
dense), the CNN, and the old image-classifier folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from trimformer.checkpoint.meta import (
    _MODEL_CLASSES,
    _TRANSFORMERS_CLASSES,
    CNN_MODEL_CLASSES,
    LEGACY_META_FILE,
    META_FILE,
    RESERVED_KEYS,
    WEIGHTS_FILE,
    CheckpointError,
    _common_meta,
    _verify_files,
    check_output_path,
    is_checkpoint,
    model_task,
    read_meta,
)
from trimformer.checkpoint.renames import renamed_to_fit
from trimformer.checkpoint.sources import check_finite, from_pretrained
from trimformer.heads.layers import apply_structure, structure_of
from trimformer.io_utils import atomic_write_dir, atomic_write_json, file_sha256
from trimformer.methods import method_named
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import config_from_dict, fold_batchnorm_, load_quantized_, pack_model
from trimformer.vision.cnn import CNNConfig, MobileNetCNN


def build_policy(method: str, method_config: dict[str, Any], num_layers: int):
    """The inference policy of a saved method (from the method registry), or None for a dense model."""
    if method == "dense":
        return None
    try:
        spec = method_named(method)
    except ValueError as err:
        raise CheckpointError(f"checkpoint: {err}") from err
    try:
        return spec.build_policy(spec.config_from_dict(method_config), num_layers)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint: the {method} config {method_config!r} is invalid ({err}); re-create the "
                              "checkpoint") from err


def _write(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], processor=None,
           overwrite: bool = False) -> Path:
    """The one writer: weights, processor files, then trimformer.json with the weights' sha256, atomically; it
    replaces only a checkpoint, and only with ``overwrite`` (:func:`check_output_path`)."""
    check_output_path(path, overwrite)

    def write(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        if processor is not None:
            processor.save_pretrained(folder)
        atomic_write_json(folder / META_FILE, {**meta, "files": {WEIGHTS_FILE: file_sha256(folder / WEIGHTS_FILE)}})
        os.chmod(folder, 0o755)  # mkdtemp / mkstemp make owner-only folders and files
        for file in folder.iterdir():
            if file.is_file():
                os.chmod(file, 0o644)

    try:
        atomic_write_dir(path, write)
    except OSError as err:  # a full disk, a read-only folder: nothing half-written is left (see io_utils)
        raise CheckpointError(f"cannot write the checkpoint {path} ({err}); the previous content of that path is "
                              "unchanged. Free some space or choose another output path") from err
    return path


def _float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_pruned(model: TokenPrunedModel, path: str | Path, tokenizer=None,
                extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a wrapped transformers model (and its tokenizer / image processor) atomically to the folder ``path``
    (an existing checkpoint there is replaced only with ``overwrite``).

    :func:`save` takes this and every other model trimformer saves; this stays for the wrapper alone."""
    path = Path(path)
    policy = model.policy
    if not hasattr(getattr(model.model, "config", None), "to_dict"):
        raise ValueError(f"save_pruned saves transformers models; {type(model.model).__name__} has no transformers "
                         "config. Save model.model.state_dict() and model.policy.config().to_dict() yourself.")
    model_class = type(model.model).__name__
    if model_class not in _TRANSFORMERS_CLASSES:
        raise ValueError(f"trimformer checkpoints hold {', '.join(_MODEL_CLASSES)}; {model_class} could not be "
                         "loaded back. Save it with save_pretrained instead.")
    meta = _common_meta(model_class, getattr(model.model.config, "num_labels", 0), extra)
    meta.update({
        "model_config": model.model.config.to_dict(),
        "method": policy.method if policy is not None else "dense",
        "method_config": policy.config().to_dict() if policy is not None else {},
        "mode": model.mode,
    })
    # quantize_ records its recipe on the object it was given: the wrapper or the bare model
    quant_config = getattr(model, "trimformer_quant_config", None) or getattr(model.model, "trimformer_quant_config",
                                                                               None)
    if quant_config is not None:
        meta["quant_config"] = quant_config
        state = pack_model(model)
    else:
        state = _float_state(model)
    return _write(path, state, meta, tokenizer, overwrite)


def _batchnorm_folded(model: MobileNetCNN) -> bool:
    """Whether ``fold_batchnorm_`` ran on the CNN (all its batch norms gone); a partial fold is refused."""
    found = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    expected = 1 + 2 * len(model.config.blocks)
    if found not in (0, expected):
        raise ValueError(f"{found} of the CNN's {expected} batch norms remain: only an unfolded or a fully folded "
                         "(fold_batchnorm_) MobileNetCNN can be saved")
    return found == 0


def save_cnn(model: MobileNetCNN, path: str | Path, extra: dict[str, Any] | None = None,
             overwrite: bool = False) -> Path:
    """Write trimformer's CNN (float or quantized, batch norms folded or not) atomically to the folder ``path``."""
    meta = _common_meta(type(model).__name__, model.config.num_classes, extra)
    meta.update({"model_config": model.config.to_dict(), "method": "dense", "method_config": {},
                 "batchnorm_folded": _batchnorm_folded(model)})
    quant_config = getattr(model, "trimformer_quant_config", None)
    if quant_config is not None:
        meta["quant_config"] = quant_config
        state = pack_model(model)
    else:
        state = _float_state(model)
    return _write(Path(path), state, meta, overwrite=overwrite)


def save(model: nn.Module, path: str | Path, processor=None, extra: dict[str, Any] | None = None, *,
         resolution: int | None = None, label_names: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """``trimformer.save``: any model trimformer runs, atomically to the folder ``path``.

    ``model``: a ``TokenPrunedModel`` (any method, quantized or not), a bare transformers model (text or vision,
    quantized or not), a ``MobileNetCNN`` (float or quantized, batch norms folded or not) or a structurally pruned
    CNN (:func:`trimformer.structured_prune`, saved by :func:`trimformer.structured.save_structured`). ``processor``:
    the tokenizer or image processor to store alongside (transformers models). ``resolution`` (input side in pixels)
    and ``label_names`` (one per output) are recorded for :func:`load`'s callers; ``extra`` adds JSON values of
    your own (training recipe, metrics...). A checkpoint already at ``path`` is replaced only with ``overwrite``;
    a file or any other folder there is never replaced. Returns the folder.
    """
    if getattr(model, "trimformer_structure", None) is not None:  # a structurally pruned CNN (trimformer.structured)
        from trimformer.structured.store import save_structured

        if processor is not None or resolution is not None or label_names is not None:
            raise ValueError("a structurally pruned model takes no processor, resolution or label_names: record "
                             "them in extra")
        return save_structured(model, path, extra, overwrite)
    extra = dict(extra or {})
    for key, value in (("resolution", resolution), ("label_names", label_names)):
        if value is not None:
            if key in extra and extra[key] != value:
                raise ValueError(f"{key} is given twice, differently ({value!r} and extra[{key!r}]={extra[key]!r})")
            extra[key] = value
    if isinstance(model, MobileNetCNN):
        if processor is not None:
            raise ValueError("a MobileNetCNN has no processor: its input normalisation is in its config")
        return save_cnn(model, path, extra, overwrite)
    if isinstance(model, TokenPrunedModel):
        return save_pruned(model, path, tokenizer=processor, extra=extra, overwrite=overwrite)
    if isinstance(model, transformers.PreTrainedModel):
        return save_pruned(TokenPrunedModel(model), path, tokenizer=processor, extra=extra, overwrite=overwrite)
    raise TypeError(f"trimformer.save takes a TokenPrunedModel, a transformers model or a MobileNetCNN, "
                    f"got {type(model).__name__}")


def _read_state(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name in meta.get("files") or [WEIGHTS_FILE]:
        try:
            state.update(load_file(str(path / name)))
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{path / name} is missing or corrupt ({err}); re-create it") from err
    return state


def _transformers_model(path: Path, meta: dict[str, Any]) -> nn.Module:
    config_dict = dict(meta["model_config"])
    try:
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        model = getattr(transformers, meta["model_class"])(config)
        structure = structure_of(model)
        if structure is not None:  # pruned heads / MLP channels: the saved, smaller shapes before the weights
            apply_structure(model, structure)
        return model
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the model config is invalid ({err!r}); re-create the checkpoint") from err


def _legacy_transformers_model(path: Path, meta: dict[str, Any]) -> nn.Module:
    """An old "hf" image classifier: save_pretrained's folder, whose tensor names are transformers' checkpoint names
    (which differ from the modules' own names for some models), so transformers maps them; safetensors only."""
    cls = getattr(transformers, meta["model_class"])
    try:
        model, info = cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True,
                                          output_loading_info=True)
    except Exception as err:  # transformers raises many types (OSError, ValueError, SafetensorError...)
        raise CheckpointError(f"{path}: the weights cannot be read ({type(err).__name__}: {err}); re-create the "
                              "checkpoint") from err
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise CheckpointError(f"{path}: weights do not match the model ({bad})")
    return model


def _load_transformers(path: Path, meta: dict[str, Any]) -> TokenPrunedModel:
    if meta.get("legacy_format"):
        return TokenPrunedModel(_legacy_transformers_model(path, meta), None).eval()
    state = _read_state(path, meta)
    check_finite(state, path)
    model = _transformers_model(path, meta)
    policy = build_policy(meta.get("method", "dense"), meta.get("method_config", {}), model.config.num_hidden_layers)
    pruned = TokenPrunedModel(model, policy, mode=meta.get("mode", "packed"))
    state = renamed_to_fit(state, model, pruned.state_dict(), prefix="model.")  # saved by another transformers
    if meta.get("quant_config") is not None:
        try:
            load_quantized_(pruned, config_from_dict(meta["quant_config"]), state, name_prefix="model.")
        except ValueError as err:
            raise CheckpointError(f"{path}: quantized weights cannot be restored ({err}); re-create it") from err
        return pruned.eval()
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return pruned.eval()


def _load_cnn(path: Path, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> MobileNetCNN:
    try:
        config = CNNConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the CNN config is invalid ({err}); re-create the checkpoint") from err
    model = MobileNetCNN(config).eval()
    if meta.get("batchnorm_folded"):
        fold_batchnorm_(model)  # the same module layout as the saved model (biases, no batch norms)
    try:
        if meta.get("quant_config") is not None:
            load_quantized_(model, config_from_dict(meta["quant_config"]), state)
        else:
            model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: the weights do not match the model (the recorded config; {err})") from err
    return model.eval()


def load_pruned(path: str | Path, verify: bool = True) -> tuple[TokenPrunedModel, dict[str, Any]]:
    """A transformers checkpoint (pruned, dense or quantized) -> (``TokenPrunedModel`` in eval mode, metadata).

    ``verify`` checks the weights' sha256 against the record (format 2 and old image-classifier checkpoints)."""
    path = Path(path)
    meta = read_meta(path)
    if meta["model_class"] in CNN_MODEL_CLASSES:
        raise CheckpointError(f"{path} holds a {meta['model_class']}, not a transformers model; load it with "
                              "trimformer.load")
    if verify:
        _verify_files(path, meta)
    return _load_transformers(path, meta), meta


def load(path: str | Path, verify: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """``trimformer.load`` -> (model in eval mode, metadata) from any checkpoint :func:`save` wrote (format 1 or 2)
    or an old ``image_classifier.json`` folder.

    A pruned or quantized transformers model comes back as a ``TokenPrunedModel``; a dense, unquantized one as the
    bare transformers model; the CNN as the bare ``MobileNetCNN`` (quantized modules restored when it was
    quantized); a structurally pruned model (``structured.json``) as the small model
    (:func:`trimformer.structured.load_structured`). ``verify`` checks the weights' sha256 against the record.
    """
    path = Path(path)
    from trimformer.structured.store import STRUCTURE_FILE, load_structured

    if (path / STRUCTURE_FILE).is_file():
        return load_structured(path, verify=verify)
    meta = read_meta(path)
    if verify:
        _verify_files(path, meta)
    if meta["model_class"] in CNN_MODEL_CLASSES:
        state = _read_state(path, meta)
        check_finite(state, path)
        return _load_cnn(path, meta, state), meta
    pruned = _load_transformers(path, meta)
    if pruned.policy is None and not meta.get("quant_config"):
        return pruned.model, meta
    return pruned, meta


def convert_image_classifier(old: str | Path, new: str | Path, verify: bool = True) -> Path:
    """Rewrite an old ``image_classifier.json`` checkpoint in the current format (``new`` may equal ``old``)."""
    meta = read_meta(old)
    if not meta.get("legacy_format"):
        raise CheckpointError(f"{old} is already a {META_FILE} checkpoint (format {meta['format_version']})")
    model, meta = load(old, verify=verify)
    extra = {k: v for k, v in meta.items() if k not in RESERVED_KEYS}
    extra["converted_from"] = f"{LEGACY_META_FILE} format {meta['format_version']}"
    return save(model, new, extra=extra, overwrite=Path(new).resolve() == Path(old).resolve())


def load_model(path_or_name: str | Path, num_labels: int | None = None, label_names: list[str] | None = None,
               seed: int = 0):
    """Any text model trimformer can run -> (TokenPrunedModel, tokenizer, metadata).

    Accepts a trimformer checkpoint, or a local folder / hub name of a transformers BERT or
    RoBERTa model (a classification head is added when ``num_labels`` is given and missing). A new head is
    initialised from ``seed`` (the global random state is left as it was), so that fine-tuning from it is
    reproducible.
    """
    if is_checkpoint(path_or_name):
        meta = read_meta(path_or_name)
        if model_task(meta["model_class"]) != "text":
            raise CheckpointError(f"{path_or_name} holds an image model ({meta['model_class']}); load it with "
                                  "trimformer.load or the vision commands (--task vision)")
        model, meta = load_pruned(path_or_name)
        return model, from_pretrained(AutoTokenizer.from_pretrained, path_or_name, "tokenizer"), meta
    kwargs: dict[str, Any] = {}
    if label_names is not None:
        kwargs = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                  "label2id": {n: i for i, n in enumerate(label_names)}}
    elif num_labels is not None:  # one output: a regression head (MSE loss)
        kwargs = {"num_labels": num_labels, **({"problem_type": "regression"} if num_labels == 1 else {})}
    with torch.random.fork_rng(devices=[]):  # the new head's init depends on ``seed`` only
        torch.manual_seed(seed)
        model = from_pretrained(AutoModelForSequenceClassification.from_pretrained, path_or_name, "text model",
                                attn_implementation="sdpa", ignore_mismatched_sizes=bool(kwargs), **kwargs)
    check_finite(dict(model.state_dict()), path_or_name)
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, path_or_name, "tokenizer")
    return TokenPrunedModel(model, None).eval(), tokenizer, {"method": "dense"}
