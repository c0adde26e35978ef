"""The CLI sub-commands, one implementation each for text and vision (each takes the parsed arguments and returns
an exit code); the task is read from the model or checkpoint (``--task`` only where nothing says)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trimformer.bench import benchmark
from trimformer.checkpoint import label_names, load_model, save, save_pruned
from trimformer.cli.inputs import (
    DEFAULT_METHOD,
    data_name,
    load_model_for,
    method_config,
    resolve_model_name,
    set_level,
    split_data,
    train_config,
)
from trimformer.data.text import load_text_data, text_collate
from trimformer.evaluation import evaluate
from trimformer.fitting import fit
from trimformer.io_utils import atomic_write_json
from trimformer.loading import model_resolution
from trimformer.methods import method_named, registered_methods
from trimformer.pruning import prune
from trimformer.train.finetune import finetune_dense
from trimformer.train.loop import epochs_to_steps, is_main_process


def _emit(result: dict, json_path: str | None) -> int:
    print(json.dumps(result, indent=2))
    if json_path:
        atomic_write_json(json_path, result)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    args.task = "text"
    train = load_text_data(data_name(args), "train")
    model, tokenizer, _ = load_model(resolve_model_name(args.model), label_names=train.label_names)
    model = model.model.train()
    train = train.subset(args.train_subset, seed=args.seed)
    config = train_config(args)
    steps = epochs_to_steps(len(train), config.batch_size, args.epochs)
    state_dir = Path(args.out + ".state") if args.resume else None
    logs = finetune_dense(model, train, text_collate(tokenizer, config.max_length), config, steps, state_dir)
    if is_main_process():
        recipe = {"stage": "finetune", "model": args.model, "data": args.data, "epochs": args.epochs,
                  "steps": steps, "train_examples": len(train), "train": config.to_dict(),
                  "final_loss": logs[-1]["loss"] if logs else None}
        save(model.eval(), args.out, processor=tokenizer, extra={"recipe": recipe})
        print(f"saved fine-tuned model to {args.out} ({steps} steps)")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    loaded = load_model_for(args, resolve_model_name(args.model))
    args.method = args.method or DEFAULT_METHOD[args.task]
    spec = method_named(args.method)
    if args.task not in spec.tasks:
        fitting = [s.name for s in registered_methods() if args.task in s.tasks]
        raise ValueError(f"--method {args.method} is a {' / '.join(spec.tasks)} method and {args.model} is a "
                         f"{args.task} model: --task {args.task} takes --method {' | '.join(fitting)}")
    if loaded.meta.get("method", "dense") != "dense":
        raise ValueError(f"{args.model} is already pruned ({loaded.meta['method']}); start from a dense fine-tuned "
                         "model")
    model = prune(loaded.model.model, method_config(args))
    recipe: dict = {"base_model": args.model, "data": data_name(args)}
    if spec.fit is not None:
        train = split_data(args, loaded, "train", args.train_subset, seed=args.seed)
        config = train_config(args)
        state_dir = Path(args.out + ".state") if args.resume else None
        history = fit(model, train, config, tokenizer=loaded.tokenizer, state_dir=state_dir)
        recipe.update(train=config.to_dict(), train_examples=len(train),
                      **{k: v for k, v in history.items() if k not in ("soft", "hard", "train")})
    if is_main_process():
        extra: dict = {"recipe": recipe}
        if args.task == "vision":
            extra.update(resolution=model_resolution(loaded.model, loaded.meta),
                         label_names=loaded.meta.get("label_names") or label_names(loaded.model))
        save_pruned(model, args.out, loaded.tokenizer, extra=extra)
        print(f"saved {args.method} model to {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    loaded = load_model_for(args, args.checkpoint)
    set_level(loaded, args.level)
    loaded.model.set_options(mode=args.mode, linear_kernel=args.linear_kernel)
    test = split_data(args, loaded, "test", args.limit)
    result = evaluate(loaded.model, test, loaded.tokenizer, args.max_length, args.batch_size)
    summary = {"checkpoint": args.checkpoint, "method": loaded.meta.get("method"), "data": data_name(args),
               "mode": args.mode, **result.summary()}
    if hasattr(loaded.model.policy, "level"):
        summary["level"] = loaded.model.policy.level
    if loaded.meta.get("quant_config"):
        summary["quant_config"] = loaded.meta["quant_config"]
    return _emit(summary, args.json)


def run_bench(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_model_for(args, args.checkpoint)
    if loaded.meta.get("method", "dense") == "dense":
        what = "a quantized dense" if loaded.meta.get("quant_config") else "a dense"
        raise ValueError(f"{args.checkpoint} is {what} model: bench compares a token-pruned checkpoint with its "
                         "dense self (quantization is simulated in float, so it has no speed of its own); use eval")
    set_level(loaded, args.level)
    loaded.model.set_options(regroup=not args.no_regroup, linear_kernel=args.linear_kernel)
    test = split_data(args, loaded, "test")
    record = benchmark(loaded.model, test, args.batch_size, tokenizer=loaded.tokenizer, max_length=args.max_length,
                       num_samples=args.num_samples, repeats=args.repeats, accuracy=not args.no_accuracy,
                       accuracy_limit=args.accuracy_limit)
    return _emit({"checkpoint": args.checkpoint, "data": args.eval_data or data_name(args),
                  "regroup": not args.no_regroup, **record}, args.json)


def parse_layer_bits(items: list[str]) -> dict[str, int]:
    """['classifier=8', ...] -> {'classifier': 8}."""
    out = {}
    for item in items:
        glob, sep, bits = item.rpartition("=")
        if not sep or not glob or not bits.isdigit():
            raise ValueError(f"--layer-wbits expects GLOB=BITS (e.g. classifier=8), got {item!r}")
        out[glob] = int(bits)
    return out


def quant_config_from_args(args: argparse.Namespace):
    """The config type ``--scheme`` names, built from ``trimformer quantize``'s flags.

    ``--region-bit`` serves PWLQ weights and PWLQ activations; a scheme's own flag (``--breakpoint``,
    ``--num-breakpoints``, ``--weight-clip``: None when not given) passed with another scheme is an error.
    """
    from trimformer.quant import ActSpec, config_type

    cls = config_type(args.scheme)
    fields = cls.field_names()
    act = (ActSpec(bits=args.abits, clip=args.act_clip, scheme=args.act_scheme, region_bit=args.region_bit)
           if args.abits else None)
    kwargs = {"wbits": args.wbits, "act": act, "per_channel": not args.per_tensor, "exclude": list(args.exclude),
              "layer_wbits": parse_layer_bits(args.layer_wbits)}
    if args.bias_correction is not None:
        kwargs["bias_correction"] = args.bias_correction
    if args.pow2_scale:
        kwargs["pow2_scale"] = True
    if "region_bit" in fields:
        kwargs["region_bit"] = args.region_bit
    given = {**vars(args), "calib_samples": args.calib_images}
    for name in ("breakpoint", "num_breakpoints", "weight_clip", "iters", "calib_samples"):
        value = given[name]
        if value is None:
            continue
        if name not in fields:
            flag = "calib-images" if name == "calib_samples" else name.replace("_", "-")
            raise ValueError(f"--{flag} does not apply to --scheme {args.scheme}")
        kwargs[name] = value
    return cls(**kwargs)


def run_quantize(args: argparse.Namespace) -> int:
    from trimformer.quant_pipeline import quantize_checkpoint

    config = quant_config_from_args(args)
    loaded = load_model_for(args, args.checkpoint)
    calib = split_data(args, loaded, "train")
    test = split_data(args, loaded, "test", args.limit)
    report = quantize_checkpoint(loaded, str(args.checkpoint), config, calib, test, args.out,
                                 max_length=args.max_length, calib_batches=args.calib_batches)
    return _emit(report, args.json)


def run_demo(args: argparse.Namespace) -> int:
    if args.task == "vision":
        from trimformer.report.vision_demo import run_vision_demo

        run_vision_demo(Path(args.out), fast=args.fast)
        return 0
    from trimformer.report.text_demo import run_demo as demo

    demo(Path(args.out), target_flops=args.target_flops, fast=args.fast)
    return 0
