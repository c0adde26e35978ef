"""What the CLI commands share: the task of a model, its data, method configs and training settings from flags."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from trimformer.adapters.bert import text_positions
from trimformer.assets import OFFLINE_MODELS, minilm_path
from trimformer.checkpoint import is_checkpoint, read_meta
from trimformer.checkpoint.sources import require_local
from trimformer.cli.options import Rule, settle
from trimformer.data.hf import hf_image_data, is_hf_source
from trimformer.data.images import load_image_data
from trimformer.data.labels import (
    image_classes,
    match_labels,
    model_label_names,
    relabel_items,
    require_classes,
)
from trimformer.data.text import BUILTIN_DATASETS, load_text_data
from trimformer.loading import Loaded, infer_task, load_any, model_resolution
from trimformer.quant import ORDER
from trimformer.train.loop import TrainConfig

DEFAULT_DATA = MappingProxyType({"text": "rotten_tomatoes", "vision": "fashion_mnist"})
DEFAULT_METHOD = MappingProxyType({"text": "ltp", "vision": "sait"})
BUILTIN_DATA_TASK = MappingProxyType({**dict.fromkeys(BUILTIN_DATASETS, "text"), "fashion_mnist": "vision"})


def resolve_model_name(name: str) -> str:
    """An offline name ('minilm': all-MiniLM-L6-v2; 'dinov2-s': the converted DINOv2 ViT-S/14, converted on first
    use) -> its folder; anything else is a checkpoint, folder or hub name, returned as is."""
    if name == "minilm":
        return str(minilm_path())
    if name == "dinov2-s":
        from trimformer.vision.dinov2_onnx import ensure_converted_checkpoint

        return str(ensure_converted_checkpoint())
    assert set(OFFLINE_MODELS) == {"minilm", "dinov2-s"}  # a new offline name needs its branch above
    check_local_path(name)
    return name


def check_local_path(name: str) -> None:
    """FileNotFoundError for a model path that does not exist (instead of a minute of hub retries), by the rule of
    :func:`trimformer.checkpoint.sources.looks_like_path`; 'org/name' with no folder 'org' here stays a hub name."""
    try:
        require_local(name)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; or use one of the offline names: {', '.join(OFFLINE_MODELS)}") from None


def settle_task(args: argparse.Namespace, path: str) -> str:
    """The task of the model at ``path`` (its checkpoint or config; ``--task`` must agree, and is used only where
    nothing says), set as ``args.task``; the data must be of that task."""
    args.task = infer_task(path, args.task)
    data = getattr(args, "data", None)
    for option, value in (("--data", data), ("--eval-data", getattr(args, "eval_data", None))):
        if value in BUILTIN_DATA_TASK and BUILTIN_DATA_TASK[value] != args.task:
            usable = [n for n, t in BUILTIN_DATA_TASK.items() if t == args.task]
            raise ValueError(f"{option} {value} is {BUILTIN_DATA_TASK[value]} data and {path} is a {args.task} "
                             f"model; use {' or '.join(usable)}, or your own "
                             f"{'image folder' if args.task == 'vision' else '.csv/.jsonl file'}")
    return args.task


def text_only(args: argparse.Namespace, *names: str) -> list[Rule]:
    """:func:`~trimformer.cli.options.settle` rules: ``names`` apply to text models only."""
    return [(n, args.task == "text", "to vision models") for n in names]


def load_model_for(args: argparse.Namespace, path: str, rules: Iterable[Rule] = ()) -> Loaded:
    """The model at ``path`` with its task settled (``args.task`` is set to it) and the options checked against it
    and against ``rules`` (see :func:`~trimformer.cli.options.settle`; once per command)."""
    settle_task(args, path)
    explicit_length = getattr(args, "max_length", None) is not None
    settle(args, args.task, [*text_only(args, "max_length", "columns", "label_type"), *rules])
    loaded = load_any(path, args.task)
    if loaded.task == "text":
        fit_max_length(args, loaded.model.model.config, explicit_length)
    return loaded


def fit_max_length(args: argparse.Namespace, config: Any, explicit: bool) -> None:
    """``--max-length`` against the text model's position embeddings (RoBERTa-style models start their positions
    after the padding index): a given value that is too long is a ValueError (instead of an index error deep in
    the forward); the default is lowered to what the model holds."""
    positions = text_positions(config)
    if positions is None:
        return
    if args.max_length > positions:
        if explicit:
            raise ValueError(f"--max-length {args.max_length} is longer than the model's {positions} positions; "
                             f"pass --max-length {positions} or less")
        args.max_length = positions


def refuse_later_stage(path: str, action: str, meta: dict[str, Any] | None = None) -> None:
    """ValueError when the model at ``path`` comes from a later stage than ``action`` in finetune -> prune ->
    quantize (a pruned model cannot be fine-tuned as a dense one, a quantized one cannot be pruned or fine-tuned:
    the result would silently drop the pruning or the quantization). ``meta``: the checkpoint's, when loaded."""
    if meta is None:
        if not is_checkpoint(path):
            return
        meta = read_meta(path)
    method = meta.get("method", "dense")
    doing = "pruning" if action == "prune" else "fine-tuning"
    if meta.get("quant_config"):
        raise ValueError(f"{path} is quantized: {doing} it would drop the quantization (the order is {ORDER}). "
                         "Start from the float checkpoint it was quantized from, and quantize last")
    if method != "dense":
        again = "pruning it again" if action == "prune" else "fine-tuning it as a dense model"
        raise ValueError(f"{path} is already token-pruned ({method}): {again} would drop that pruning (the "
                         f"order is {ORDER}). Start from the dense fine-tuned checkpoint it was made from, or quantize "
                         "this one")


def data_name(args: argparse.Namespace) -> str:
    """``--data``, or the task's default built-in data set."""
    return args.data or DEFAULT_DATA[args.task]


def split_data(args: argparse.Namespace, loaded: Loaded, split: str, limit: int | None = None, seed: int = 0):
    """The ``split`` ('train' or 'test') of the command's data for ``loaded``'s task, optionally a seeded subset:
    a built-in data set, or ``--data`` (training; evaluation too without ``--eval-data``) and ``--eval-data``
    files or image folders. Its labels are checked against the model's (:func:`~trimformer.data.labels.
    match_labels`) and put in the model's order; training data needs two classes or more."""
    source = args.eval_data if split == "test" and args.eval_data else data_name(args)
    model_names = model_label_names(loaded.model.model.config, loaded.meta.get("label_names"))
    if loaded.task == "vision":
        resolution = model_resolution(loaded.model, loaded.meta)
        images = hf_image_data(source, split, resolution, limit, seed) if is_hf_source(source) else \
            load_image_data(source, split, resolution, limit, seed=seed)
        classes = image_classes(images)
        if split == "train":
            require_classes(classes, source)
        if classes is None:  # a dataset without class names: nothing to check
            return images
        return relabel_items(images, match_labels(classes, model_names, source, _model_name(args)))
    texts = load_text_data(source, split, columns=getattr(args, "columns", None),
                           label_type=getattr(args, "label_type", "auto"))
    if split == "train":
        require_classes(texts.label_names, source)
    return texts.relabel(model_names, _model_name(args)).subset(limit, seed=seed)


def _model_name(args: argparse.Namespace) -> str:
    return f"the model {getattr(args, 'model', None) or getattr(args, 'checkpoint', '')}".rstrip()


def image_label_names(data: Any) -> list[str]:
    """The class names of an image dataset (Fashion-MNIST, an image folder, or a subset of one)."""
    base = getattr(data, "dataset", data)
    return list(base.classes)


def train_config(args: argparse.Namespace, **recipe: Any) -> TrainConfig:
    """The training settings given on the command line, over ``recipe``'s."""
    return TrainConfig(**{**recipe, "batch_size": args.batch_size, "lr": args.lr, "max_length": args.max_length,
                          "seed": args.seed})


def set_level(loaded: Loaded, level: float | None) -> None:
    """``--level``: run a SaiT checkpoint at another sparsity."""
    if level is not None:
        if not hasattr(loaded.model.policy, "set_level"):
            method = loaded.meta.get("method", "dense")
            raise ValueError(f"--level applies to SaiT checkpoints only; this one is {method}: leave --level out")
        loaded.model.policy.set_level(level)
