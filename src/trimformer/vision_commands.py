"""``--task vision`` implementations of prune / eval / bench (a thin shell over :mod:`trimformer.vision_pipeline`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from trimformer.checkpoint import label_names, save_pruned
from trimformer.evaluation import evaluate
from trimformer.fitting import fit
from trimformer.io_utils import atomic_write_json
from trimformer.methods import ASViTConfig, EViTConfig, SaiTConfig, ToMeConfig
from trimformer.pruned import TokenPrunedModel
from trimformer.pruning import prune
from trimformer.train.loop import TrainConfig
from trimformer.vision_pipeline import (
    VISION_METHODS,
    load_image_data,
    load_vision_model,
    model_resolution,
    pixel_batches,
)

DEFAULT_VISION_DATA = "fashion_mnist"


def vision_data_name(args: argparse.Namespace) -> str:
    """The text default data name means 'not given' for vision."""
    return DEFAULT_VISION_DATA if args.data == "rotten_tomatoes" else args.data


def method_config(args: argparse.Namespace) -> Any:
    """The method's config from the command-line options."""
    if args.method == "sait":
        return SaiTConfig(policy=args.sait_policy, default_level=args.level, steps=args.steps)
    if args.method == "asvit":
        return ASViTConfig(target_flops=args.target_flops, steps=args.steps)
    if args.method == "evit":
        return EViTConfig(keep_rate=args.keep_rate)
    return ToMeConfig(r=args.r)


def run_prune_vision(args: argparse.Namespace) -> int:
    if args.method not in VISION_METHODS:
        raise ValueError(f"--task vision takes --method {' | '.join(VISION_METHODS)}, got {args.method!r}")
    base, meta = load_vision_model(args.model)
    if meta.get("method", "dense") != "dense":
        raise ValueError(f"{args.model} is already pruned ({meta['method']}); start from a dense fine-tuned model")
    config = method_config(args)
    model = prune(base.model, config)
    resolution = model_resolution(base, meta)
    recipe: dict[str, Any] = {"base_model": args.model, "data": vision_data_name(args)}
    if args.method in ("sait", "asvit"):

        train = load_image_data(vision_data_name(args), "train", resolution, args.train_subset, seed=args.seed)
        train_config = TrainConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        history = fit(model, train, train_config)
        recipe.update(train=train_config.to_dict(), train_images=len(train),
                      **{k: v for k, v in history.items() if k != "train"})
    labels = meta.get("label_names") or label_names(base)
    save_pruned(model, args.out, extra={"resolution": resolution, "label_names": labels, "recipe": recipe})
    print(f"saved {args.method} model to {args.out}")
    return 0


def _test_batches(args: argparse.Namespace, resolution: int, limit: int | None, batch_size: int):
    data = args.eval_data or vision_data_name(args)
    return pixel_batches(load_image_data(data, "test", resolution, limit), batch_size)


def _set_level(model: TokenPrunedModel, level: float | None) -> None:
    if level is not None:
        if not hasattr(model.policy, "set_level"):
            raise ValueError("--level applies to SaiT checkpoints only")
        model.policy.set_level(level)


def run_eval_vision(args: argparse.Namespace) -> int:
    model, meta = load_vision_model(args.checkpoint)
    _set_level(model, args.level)
    model.set_options(mode=args.mode, linear_kernel=args.linear_kernel)
    result = evaluate(model, _test_batches(args, model_resolution(model, meta), args.limit, args.batch_size))
    summary = {"checkpoint": args.checkpoint, "method": meta.get("method"), "data": vision_data_name(args),
               "mode": args.mode, **result.summary()}
    if hasattr(model.policy, "level"):
        summary["level"] = model.policy.level
    print(json.dumps(summary, indent=2))
    if args.json:
        atomic_write_json(args.json, summary)
    return 0


def bench_vision(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON record of ``trimformer bench --task vision`` (same keys as the text bench)."""
    from trimformer.bench import check_benchable, speed_record, speed_variants, time_variants

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, meta = load_vision_model(args.checkpoint)
    check_benchable(args.checkpoint, meta)
    _set_level(model, args.level)
    model.set_options(regroup=not args.no_regroup, linear_kernel=args.linear_kernel)
    resolution = model_resolution(model, meta)
    timed = _test_batches(args, resolution, args.num_samples, args.batch_size)
    batches = [{"pixel_values": p} for p, _ in timed]
    speed = time_variants(speed_variants(model, masked=False), batches, args.repeats)
    counts = evaluate(model, timed, progress=False)
    result: dict[str, Any] = {
        "method": meta["method"], "data": args.eval_data or vision_data_name(args), "checkpoint": args.checkpoint,
        "batch_size": args.batch_size, "num_samples_timed": sum(len(y) for _, y in timed), "repeats": args.repeats,
        "regroup": model.execution.regroup, **speed_record(meta, speed, counts, model),
    }
    if hasattr(model.policy, "level"):
        result["level"] = model.policy.level
    if not args.no_accuracy:
        scored = _test_batches(args, resolution, args.accuracy_limit, 64)
        pruned_eval = evaluate(model, scored)
        with model.pruning_disabled():
            dense_eval = evaluate(model, scored)
        result.update(accuracy_dense=dense_eval.accuracy, accuracy_pruned=pruned_eval.accuracy,
                      num_eval_examples=pruned_eval.num_examples)
    return result
