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

from trimformer.checkpoint.meta import (
    CNN_MODEL_CLASSES,
    FORMAT_VERSION,
    LEGACY_META_FILE,
    META_FILE,
    READABLE_FORMATS,
    RESERVED_KEYS,
    TEXT_MODEL_CLASSES,
    VISION_MODEL_CLASSES,
    WEIGHTS_FILE,
    CheckpointError,
    check_output_path,
    checkpoint_task,
    is_checkpoint,
    is_pruned_checkpoint,
    label_names,
    model_task,
    read_meta,
)
from trimformer.checkpoint.store import (
    build_policy,
    convert_image_classifier,
    load,
    load_model,
    load_pruned,
    save,
    save_cnn,
    save_pruned,
)

__all__ = [
    "check_output_path",
    "CNN_MODEL_CLASSES",
    "CheckpointError",
    "FORMAT_VERSION",
    "LEGACY_META_FILE",
    "META_FILE",
    "READABLE_FORMATS",
    "RESERVED_KEYS",
    "TEXT_MODEL_CLASSES",
    "VISION_MODEL_CLASSES",
    "WEIGHTS_FILE",
    "build_policy",
    "checkpoint_task",
    "convert_image_classifier",
    "is_checkpoint",
    "is_pruned_checkpoint",
    "label_names",
    "load",
    "load_model",
    "load_pruned",
    "model_task",
    "read_meta",
    "save",
    "save_cnn",
    "save_pruned",
]
