"""What the CLI commands share: the task of a model, its data, method configs and training settings from flags."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trimformer.assets import OFFLINE_MODELS, minilm_path
from trimformer.cli.options import Rule, settle
from trimformer.data.images import load_image_data
from trimformer.data.text import BUILTIN_DATASETS, load_text_data
from trimformer.loading import Loaded, infer_task, load_any, model_resolution
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
    """FileNotFoundError for a model path that does not exist (instead of a minute of hub retries): a name that
    can only be a path (absolute, ``./``, ``~``, three or more parts, a Windows drive) or whose first folder
    exists here; 'org/name' with no such folder stays a hub name."""
    path = Path(name).expanduser()
    parts = Path(name).parts
    looks_local = path.is_absolute() or name.startswith((".", "~")) or len(parts) > 2 or \
        (len(parts) == 2 and Path(parts[0]).is_dir()) or "\\" in name
    if looks_local and not path.exists():
        raise FileNotFoundError(f"model path {name} does not exist (not a hub name either); check the path, or "
                                f"use one of the offline names: {', '.join(OFFLINE_MODELS)}")


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
    settle(args, args.task, [*text_only(args, "max_length"), *rules])
    return load_any(path, args.task)


def data_name(args: argparse.Namespace) -> str:
    """``--data``, or the task's default built-in data set."""
    return args.data or DEFAULT_DATA[args.task]


def split_data(args: argparse.Namespace, loaded: Loaded, split: str, limit: int | None = None, seed: int = 0):
    """The ``split`` ('train' or 'test') of the command's data for ``loaded``'s task, optionally a seeded subset:
    a built-in data set, or ``--data`` (training; evaluation too without ``--eval-data``) and ``--eval-data``
    files or image folders."""
    data = data_name(args)
    eval_data = getattr(args, "eval_data", None)
    if loaded.task == "vision":
        source = eval_data if split == "test" and eval_data else data
        return load_image_data(source, split, model_resolution(loaded.model, loaded.meta), limit, seed=seed)
    names = _label_names(loaded) if Path(data).suffix or eval_data else None
    if split == "train":
        texts = load_text_data(data, "train", names)
    else:  # --eval-data, or a --data file itself, or the built-in test split
        texts = load_text_data(eval_data or data, "test", names)
    return texts.subset(limit, seed=seed)


def _label_names(loaded: Loaded) -> list[str]:
    config = loaded.model.model.config
    return [config.id2label[i] for i in range(config.num_labels)]


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
