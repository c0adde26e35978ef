"""What the CLI commands share: the task of a model, its data, method configs and training settings from flags."""

from __future__ import annotations

import argparse
from types import MappingProxyType
from typing import Any

from trimformer.assets import minilm_path
from trimformer.checkpoint import is_checkpoint, read_meta
from trimformer.data.hf import hf_image_data, is_hf_source
from trimformer.data.images import load_image_data
from trimformer.data.labels import (
    image_classes,
    match_labels,
    model_label_names,
    relabel_items,
    require_classes,
)
from trimformer.data.text import load_text_data
from trimformer.loading import Loaded, infer_task, load_any, model_resolution
from trimformer.methods import (
    ASViTConfig,
    EViTConfig,
    LTPConfig,
    SaiTConfig,
    ToMeConfig,
    TopKConfig,
    method_named,
)
from trimformer.quant import ORDER
from trimformer.train.loop import TrainConfig

DEFAULT_DATA = MappingProxyType({"text": "rotten_tomatoes", "vision": "fashion_mnist"})
DEFAULT_METHOD = MappingProxyType({"text": "ltp", "vision": "sait"})


def resolve_model_name(name: str) -> str:
    """'minilm' is the offline all-MiniLM-L6-v2; anything else is a folder or hub name."""
    return str(minilm_path()) if name == "minilm" else name


def load_model_for(args: argparse.Namespace, path: str, label_names: list[str] | None = None) -> Loaded:
    """The model at ``path`` with its task settled (``args.task`` is set to it)."""
    args.task = infer_task(path, args.task)
    return load_any(path, args.task, label_names)


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


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed)


def method_config(args: argparse.Namespace) -> Any:
    """The config of ``--method`` from its flags (each method reads only its own)."""
    target = args.target_flops if args.target_flops > 0 else None
    if args.method == "ltp":
        return LTPConfig(final_threshold=args.final_threshold, temperature=args.temperature, lambda_=args.lambda_,
                         target_flops=target, soft_steps=args.soft_steps, hard_steps=args.hard_steps,
                         threshold_lr=args.threshold_lr)
    if args.method == "topk":
        return TopKConfig(target_flops=target, hard_steps=args.hard_steps)
    if args.method == "sait":
        return SaiTConfig(policy=args.sait_policy, default_level=args.level, steps=args.steps)
    if args.method == "asvit":
        return ASViTConfig(target_flops=args.target_flops, steps=args.steps)
    if args.method == "evit":
        return EViTConfig(keep_rate=args.keep_rate)
    if args.method == "tome":
        return ToMeConfig(r=args.r)
    method_named(args.method)  # raises with the known names
    raise AssertionError(args.method)


def set_level(loaded: Loaded, level: float | None) -> None:
    """``--level``: run a SaiT checkpoint at another sparsity."""
    if level is not None:
        if not hasattr(loaded.model.policy, "set_level"):
            raise ValueError("--level applies to SaiT checkpoints only")
        loaded.model.policy.set_level(level)
