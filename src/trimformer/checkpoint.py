"""One checkpoint format for every model trimformer saves: text and vision transformers (pruned or dense,
quantized or not) and trimformer's own MobileNet-style CNN (float or quantized).

A checkpoint is a folder::

    trimformer.json     the one metadata file (below)
    model.safetensors   every tensor: the wrapper's state (``model.*`` weights, learned thresholds ``policy.*``)
                        for a transformers model, the module's state for the CNN; quantized weights are
                        bit-packed (``<layer>.weight.qpack.*``)
    tokenizer files     only when a ``processor`` (tokenizer / image processor) is given to :func:`save`

``trimformer.json``, format 2 (:data:`FORMAT_VERSION`)::

    format_version          2
    trimformer_version, transformers_version, torch_version     what wrote it
    model_class             a transformers class (TEXT_MODEL_CLASSES, VISION_MODEL_CLASSES) or "MobileNetCNN"
    model_config            the transformers ``config.to_dict()``, or the ``CNNConfig`` dict
    method, method_config   the pruning method and its exact config ("dense", {} when not pruned; always for the CNN)
    mode                    the wrapper's execution mode (transformers models only)
    quant_config            the quantization recipe (``quantize_``), present only for quantized weights
    batchnorm_folded        MobileNetCNN only: its batch norms were folded into the convolutions (``fold_batchnorm_``)
    files                   {"model.safetensors": sha256}, checked on load unless ``verify=False``
    resolution              optional: input side in pixels (a positive int)
    label_names             optional: class names in label-id order, one per output
    ...                     anything else the caller passed as ``extra`` (training recipe, metrics, ...)

Format 1 ``trimformer.json`` files (transformers models only, written before this module read CNNs) differ only by
their version number and the keys ``files``, ``torch_version`` and ``batchnorm_folded``, which they lack; they
load unchanged (without a hash check: they recorded none).

Writes are atomic (:func:`trimformer.io_utils.atomic_write_dir`: the folder is built next to the target, the
JSON written last, and swapped in only once complete). Weights are read with safetensors only, never pickle; a
format-1/2 model is built from the config in the JSON (no ``from_pretrained``, no remote code).

Old ``image_classifier.json`` checkpoints (the former second format of ``trimformer.vision.checkpoint``, kinds
"cnn" and "hf") are read by the same :func:`load`; ``_read_legacy_meta`` maps their record onto the format-2 keys
(kind/config -> model_class/model_config, ``legacy_format`` set, everything else carried over). Decision: read them
in place rather than refuse them, because doing so is as safe as reading format 2. The old format was JSON +
safetensors too, with a sha256 per weight file (checked here as before); a "cnn" folder is loaded by the same code
as a format-2 CNN; an "hf" folder is ``save_pretrained``'s (plain ``config.json``, tensors under transformers'
checkpoint names), read by ``from_pretrained`` restricted to local safetensors files (``use_safetensors=True``,
``local_files_only=True``, no remote code), which is what wrote it and what maps those names onto the modules.
Refusing them would only have forced a conversion step running the same code. :func:`convert_image_classifier`
rewrites one in format 2 for those who want one kind of folder on disk (the reader can then be dropped).
Nothing writes the old format any more (``trimformer.vision.checkpoint`` is gone).
"""

from __future__ import annotations

import json
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

from trimformer import __version__
from trimformer.io_utils import atomic_write_dir, atomic_write_json, file_sha256
from trimformer.methods import method_named
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import config_from_dict, fold_batchnorm_, load_quantized_, pack_model
from trimformer.vision.cnn import CNNConfig, MobileNetCNN

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
# keys save() writes itself; ``extra`` may not set them
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


def model_task(model_class: str) -> str:
    """"text" or "vision" for a supported model class."""
    if model_class in TEXT_MODEL_CLASSES:
        return "text"
    if model_class in VISION_MODEL_CLASSES or model_class in CNN_MODEL_CLASSES:
        return "vision"
    raise ValueError(f"model class {model_class!r} is not supported (one of {', '.join(_MODEL_CLASSES)})")


def build_policy(method: str, method_config: dict[str, Any], num_layers: int):
    """The inference policy of a saved method (from the method registry), or None for a dense model."""
    if method == "dense":
        return None
    try:
        spec = method_named(method)
    except ValueError as err:
        raise CheckpointError(f"checkpoint: {err}") from err
    return spec.build_policy(spec.config_from_dict(method_config), num_layers)


# --- writing ---------------------------------------------------------------------------------------------------------

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


def _write(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], processor=None) -> Path:
    """The one writer: weights, processor files, then trimformer.json with the weights' sha256, atomically."""

    def write(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        if processor is not None:
            processor.save_pretrained(folder)
        atomic_write_json(folder / META_FILE, {**meta, "files": {WEIGHTS_FILE: file_sha256(folder / WEIGHTS_FILE)}})
        os.chmod(folder, 0o755)  # mkdtemp / mkstemp make owner-only folders and files
        for file in folder.iterdir():
            if file.is_file():
                os.chmod(file, 0o644)

    atomic_write_dir(path, write)
    return path


def _float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_pruned(model: TokenPrunedModel, path: str | Path, tokenizer=None,
                extra: dict[str, Any] | None = None) -> Path:
    """Write a wrapped transformers model (and its tokenizer / image processor) atomically to the folder ``path``.

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
    return _write(path, state, meta, tokenizer)


def _batchnorm_folded(model: MobileNetCNN) -> bool:
    """Whether ``fold_batchnorm_`` ran on the CNN (all its batch norms gone); a partial fold is refused."""
    found = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    expected = 1 + 2 * len(model.config.blocks)
    if found not in (0, expected):
        raise ValueError(f"{found} of the CNN's {expected} batch norms remain: only an unfolded or a fully folded "
                         "(fold_batchnorm_) MobileNetCNN can be saved")
    return found == 0


def save_cnn(model: MobileNetCNN, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
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
    return _write(Path(path), state, meta)


def save(model: nn.Module, path: str | Path, processor=None, extra: dict[str, Any] | None = None, *,
         resolution: int | None = None, label_names: Sequence[str] | None = None) -> Path:
    """``trimformer.save``: any model trimformer runs, atomically to the folder ``path``.

    ``model``: a ``TokenPrunedModel`` (any method, quantized or not), a bare transformers model (text or vision,
    quantized or not) or a ``MobileNetCNN`` (float or quantized, batch norms folded or not). ``processor``: the
    tokenizer or image processor to store alongside (transformers models). ``resolution`` (input side in pixels)
    and ``label_names`` (one per output) are recorded for :func:`load`'s callers; ``extra`` adds JSON values of
    your own (training recipe, metrics...). Returns the folder.
    """
    extra = dict(extra or {})
    for key, value in (("resolution", resolution), ("label_names", label_names)):
        if value is not None:
            if key in extra and extra[key] != value:
                raise ValueError(f"{key} is given twice, differently ({value!r} and extra[{key!r}]={extra[key]!r})")
            extra[key] = value
    if isinstance(model, MobileNetCNN):
        if processor is not None:
            raise ValueError("a MobileNetCNN has no processor: its input normalisation is in its config")
        return save_cnn(model, path, extra)
    if isinstance(model, TokenPrunedModel):
        return save_pruned(model, path, tokenizer=processor, extra=extra)
    if isinstance(model, transformers.PreTrainedModel):
        return save_pruned(TokenPrunedModel(model), path, tokenizer=processor, extra=extra)
    raise TypeError(f"trimformer.save takes a TokenPrunedModel, a transformers model or a MobileNetCNN, "
                    f"got {type(model).__name__}")


# --- reading ---------------------------------------------------------------------------------------------------------

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
    return meta


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
    return meta


def _check_files(path: Path, meta: dict[str, Any]) -> None:
    files = meta.get("files")
    if files is None:
        return
    if (not isinstance(files, dict) or not files
            or not all(isinstance(n, str) and Path(n).name == n and n.endswith(".safetensors") for n in files)):
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
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the model config is invalid ({err!r}); re-create the checkpoint") from err
    return getattr(transformers, meta["model_class"])(config)


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
    model = _transformers_model(path, meta)
    policy = build_policy(meta.get("method", "dense"), meta.get("method_config", {}), model.config.num_hidden_layers)
    pruned = TokenPrunedModel(model, policy, mode=meta.get("mode", "packed"))
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
    quantized). ``verify`` checks the weights' sha256 against the record.
    """
    path = Path(path)
    meta = read_meta(path)
    if verify:
        _verify_files(path, meta)
    if meta["model_class"] in CNN_MODEL_CLASSES:
        return _load_cnn(path, meta, _read_state(path, meta)), meta
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
    return save(model, new, extra=extra)


def checkpoint_task(path: str | Path) -> str | None:
    """"text" or "vision" for a checkpoint folder (its metadata says), None for anything else."""
    if not is_checkpoint(path):
        return None
    return model_task(read_meta(path)["model_class"])


# --- transformers folders and hub names ------------------------------------------------------------------------------

def load_model(path_or_name: str | Path, num_labels: int | None = None, label_names: list[str] | None = None):
    """Any text model trimformer can run -> (TokenPrunedModel, tokenizer, metadata).

    Accepts a trimformer checkpoint, or a local folder / hub name of a transformers BERT or
    RoBERTa model (a classification head is added when ``num_labels`` is given and missing).
    """
    if is_checkpoint(path_or_name):
        meta = read_meta(path_or_name)
        if model_task(meta["model_class"]) != "text":
            raise CheckpointError(f"{path_or_name} holds an image model ({meta['model_class']}); load it with "
                                  "trimformer.load or the vision commands (--task vision)")
        model, meta = load_pruned(path_or_name)
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
