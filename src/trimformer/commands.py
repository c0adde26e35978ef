"""Implementations of the CLI sub-commands (each takes the parsed arguments, returns an exit code)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trimformer.assets import minilm_path
from trimformer.checkpoint import label_names, load_model, save_dense, save_pruned
from trimformer.data.text import TextDataset, load_text_data, text_collate
from trimformer.evaluation import evaluate
from trimformer.fitting import fit
from trimformer.io_utils import atomic_write_json
from trimformer.methods import LTPConfig, TopKConfig
from trimformer.pruning import prune
from trimformer.train.finetune import finetune_dense
from trimformer.train.loop import TrainConfig, epochs_to_steps, is_main_process


def resolve_model_name(name: str) -> str:
    """'minilm' is the offline all-MiniLM-L6-v2; anything else is a folder or hub name."""
    return str(minilm_path()) if name == "minilm" else name


def load_splits(data: str, eval_data: str | None, names: list[str] | None = None) -> tuple[TextDataset, TextDataset]:
    train = load_text_data(data, "train", names)
    if eval_data is not None:
        return train, load_text_data(eval_data, "test", train.label_names)
    if Path(data).suffix:
        raise ValueError("--data is a file: pass the evaluation file with --eval-data")
    return train, load_text_data(data, "test")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed)


def run_finetune(args: argparse.Namespace) -> int:
    train, _ = load_splits(args.data, args.eval_data)
    train = train.subset(args.train_subset, seed=args.seed)
    pruned, tokenizer, _ = load_model(resolve_model_name(args.model), label_names=train.label_names)
    model = pruned.model
    config = train_config(args)
    steps = epochs_to_steps(len(train), config.batch_size, args.epochs)
    state_dir = Path(args.out + ".state") if args.resume else None
    logs = finetune_dense(model, train, text_collate(tokenizer, config.max_length), config, steps, state_dir)
    if is_main_process():
        recipe = {"stage": "finetune", "model": args.model, "data": args.data, "epochs": args.epochs,
                  "steps": steps, "train_examples": len(train), "train": config.to_dict(),
                  "final_loss": logs[-1]["loss"] if logs else None}
        save_dense(model, tokenizer, args.out, extra=recipe)
        print(f"saved fine-tuned model to {args.out}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    if args.task == "vision":
        from trimformer.vision_commands import run_prune_vision

        args.method = args.method or "sait"
        return run_prune_vision(args)
    args.method = args.method or "ltp"
    if args.method not in ("ltp", "topk"):
        raise ValueError(f"--method {args.method} is a vision method: add --task vision")
    pruned, tokenizer, meta = load_model(args.model)
    if meta.get("method") != "dense":
        raise ValueError(f"{args.model} is already pruned ({meta['method']}); prune a dense fine-tuned model")
    train, _ = load_splits(args.data, args.eval_data, label_names(pruned) if Path(args.data).suffix else None)
    train = train.subset(args.train_subset, seed=args.seed)
    target = args.target_flops if args.target_flops > 0 else None
    if args.method == "ltp":
        method_config = LTPConfig(final_threshold=args.final_threshold, temperature=args.temperature,
                                  lambda_=args.lambda_, target_flops=target, soft_steps=args.soft_steps,
                                  hard_steps=args.hard_steps, threshold_lr=args.threshold_lr)
    else:
        method_config = TopKConfig(target_flops=target, hard_steps=args.hard_steps)
    model = prune(pruned.model, method_config)
    config = train_config(args)
    state_dir = Path(args.out + ".state") if args.resume else None
    history = fit(model, train, config, tokenizer=tokenizer, state_dir=state_dir)
    if is_main_process():
        summary = {k: v for k, v in history.items() if k not in ("soft", "hard")}
        save_pruned(model, args.out, tokenizer, extra={
            "recipe": {"base_model": args.model, "data": args.data, "train_examples": len(train),
                       "train": config.to_dict(), **summary}})
        print(f"saved {args.method} model to {args.out}: {json.dumps(summary)}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.task == "vision":
        from trimformer.vision_commands import run_eval_vision

        return run_eval_vision(args)
    if args.level is not None:
        raise ValueError("--level applies to vision SaiT checkpoints (--task vision)")
    model, tokenizer, meta = load_model(args.checkpoint)
    model.set_options(mode=args.mode, linear_kernel=args.linear_kernel)
    _, test = load_splits(args.data, args.eval_data, label_names(model) if Path(args.data).suffix else None)
    test = test.subset(args.limit)
    result = evaluate(model, test, tokenizer, args.max_length)
    summary = {"checkpoint": args.checkpoint, "method": meta.get("method"), "data": args.data,
               "mode": args.mode, **result.summary()}
    if meta.get("quant_config"):
        summary["quant_config"] = meta["quant_config"]
    print(json.dumps(summary, indent=2))
    if args.json:
        atomic_write_json(args.json, summary)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from trimformer.bench import bench_checkpoint

    if args.task == "vision":
        from trimformer.vision_commands import bench_vision

        result = bench_vision(args)
        print(json.dumps(result, indent=2))
        if args.json:
            atomic_write_json(args.json, result)
        return 0
    if args.level is not None:
        raise ValueError("--level applies to vision SaiT checkpoints (--task vision)")
    result = bench_checkpoint(args.checkpoint, args.data, args.eval_data, batch_size=args.batch_size,
                              max_length=args.max_length, num_samples=args.num_samples, repeats=args.repeats,
                              threads=args.threads, accuracy=not args.no_accuracy,
                              accuracy_limit=args.accuracy_limit, regroup=not args.no_regroup,
                              linear_kernel=args.linear_kernel)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


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
    kwargs = {"wbits": args.wbits, "act": act, "bias_correction": args.bias_correction,
              "per_channel": not args.per_tensor, "pow2_scale": args.pow2_scale, "exclude": list(args.exclude),
              "layer_wbits": parse_layer_bits(args.layer_wbits)}
    if "region_bit" in fields:
        kwargs["region_bit"] = args.region_bit
    for name in ("breakpoint", "num_breakpoints", "weight_clip"):
        value = getattr(args, name)
        if value is None:
            continue
        if name not in fields:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --scheme {args.scheme}")
        kwargs[name] = value
    return cls(**kwargs)


def run_quantize(args: argparse.Namespace) -> int:
    from trimformer.quant_pipeline import quantize_vision_checkpoint

    config = quant_config_from_args(args)
    if args.task == "vision":
        from trimformer.vision_commands import vision_data_name

        report = quantize_vision_checkpoint(args.checkpoint, config, vision_data_name(args), args.eval_data,
                                            args.out, calib_batches=args.calib_batches, test_limit=args.limit)
    else:
        report = _quantize_text(args, config)
    print(json.dumps(report, indent=2))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def _quantize_text(args: argparse.Namespace, config) -> dict:
    from trimformer.quant_pipeline import quantize_text_model

    model, tokenizer, meta = load_model(args.checkpoint)
    calib, test = load_splits(args.data, args.eval_data, label_names(model) if Path(args.data).suffix else None)
    return quantize_text_model(model, tokenizer, meta, args.checkpoint, config, calib, test.subset(args.limit),
                               args.out, max_length=args.max_length, calib_batches=args.calib_batches)


def run_demo(args: argparse.Namespace) -> int:
    if args.task == "vision":
        from trimformer.vision_demo import run_vision_demo

        run_vision_demo(Path(args.out), fast=args.fast)
        return 0
    from trimformer.demo import run_demo as demo

    demo(Path(args.out), target_flops=args.target_flops, fast=args.fast)
    return 0
