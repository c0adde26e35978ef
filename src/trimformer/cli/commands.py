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
    refuse_later_stage,
    resolve_model_name,
    set_level,
    split_data,
    train_config,
)
from trimformer.data.labels import require_classes
from trimformer.data.text import load_text_data, text_collate
from trimformer.evaluation import evaluate
from trimformer.fitting import fit
from trimformer.io_utils import atomic_write_json, check_report_path
from trimformer.loading import model_resolution
from trimformer.methods import method_named, registered_methods
from trimformer.pruning import prune
from trimformer.train.finetune import finetune_dense
from trimformer.train.loop import epochs_to_steps, is_main_process
from trimformer.train.state import discard_state


def _emit(result: dict, json_path: str | None) -> int:
    print(json.dumps(result, indent=2))
    if json_path:
        atomic_write_json(check_report_path(json_path), result)
    return 0


def _state_dir(args: argparse.Namespace) -> Path | None:
    """``OUT.state`` when the run saves its training state (``--resume`` or ``--restart``), else None."""
    return Path(args.out + ".state") if args.resume or args.restart else None


def _about(args: argparse.Namespace) -> dict:
    """Where a run's model and data came from (recorded with its training state)."""
    return {"model": args.model, "data": data_name(args), "eval_data": args.eval_data}


def _finish(args: argparse.Namespace, state_dir: Path | None) -> None:
    """After the checkpoint is saved, the finished run's training state goes (nothing is left to resume)."""
    if state_dir is not None:
        discard_state(state_dir)


def run_finetune(args: argparse.Namespace) -> int:
    args.task = "text"
    model_path = resolve_model_name(args.model)
    refuse_later_stage(model_path, "fine-tune")
    train = load_text_data(data_name(args), "train", columns=args.columns, label_type=args.label_type)
    require_classes(train.label_names, data_name(args))
    head = {"label_names": train.label_names} if train.label_names is not None else {"num_labels": 1}
    model, tokenizer, _ = load_model(model_path, **head)
    model = model.model.train()
    train = train.subset(args.train_subset, seed=args.seed)
    config = train_config(args)
    steps = epochs_to_steps(len(train), config.batch_size, args.epochs)
    state_dir = _state_dir(args)
    logs = finetune_dense(model, train, text_collate(tokenizer, config.max_length), config, steps, state_dir,
                          restart=args.restart, about=_about(args))
    if is_main_process():
        recipe = {"stage": "finetune", "model": args.model, "data": args.data, "epochs": args.epochs,
                  "steps": steps, "train_examples": len(train), "train": config.to_dict(),
                  "final_loss": logs[-1]["loss"] if logs else None}
        save(model.eval(), args.out, processor=tokenizer, extra={"recipe": recipe}, overwrite=args.overwrite)
        _finish(args, state_dir)
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
    refuse_later_stage(args.model, "prune", loaded.meta)
    model = prune(loaded.model.model, method_config(args))
    recipe: dict = {"base_model": args.model, "data": data_name(args)}
    if spec.fit is None and (args.resume or args.restart):
        raise ValueError(f"--method {args.method} is training free: there is no training state to "
                         f"{'resume' if args.resume else 'restart'}; drop the flag")
    if spec.fit is not None:
        train = split_data(args, loaded, "train", args.train_subset, seed=args.seed)
        config = train_config(args)
        history = fit(model, train, config, tokenizer=loaded.tokenizer, state_dir=_state_dir(args),
                      restart=args.restart, about=_about(args))
        recipe.update(train=config.to_dict(), train_examples=len(train),
                      **{k: v for k, v in history.items() if k not in ("soft", "hard", "train")})
    if is_main_process():
        extra: dict = {"recipe": recipe}
        if args.task == "vision":
            extra.update(resolution=model_resolution(loaded.model, loaded.meta),
                         label_names=loaded.meta.get("label_names") or label_names(loaded.model))
        save_pruned(model, args.out, loaded.tokenizer, extra=extra, overwrite=args.overwrite)
        _finish(args, _state_dir(args) if spec.fit is not None else None)
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
    from trimformer.quant_pipeline import quantize_checkpoint

    config = quant_config_from_args(args)
    loaded = load_model_for(args, args.checkpoint)
    calib = split_data(args, loaded, "train")
    test = split_data(args, loaded, "test", args.limit)
    report = quantize_checkpoint(loaded, str(args.checkpoint), config, calib, test, args.out,
                                 max_length=args.max_length, calib_batches=args.calib_batches,
                                 overwrite=args.overwrite)
    return _emit(report, args.json)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").is_file())):
        raise ValueError(f"{out} exists and is not a demo output folder (no results.json): the demo writes its "
                         "checkpoints, plots and report there and never replaces a user's files; choose another --out")
    if args.task == "vision":
        from trimformer.report.vision_demo import run_vision_demo

        run_vision_demo(Path(args.out), fast=args.fast)
        return 0
    from trimformer.report.text_demo import run_demo as demo

    demo(Path(args.out), target_flops=args.target_flops, fast=args.fast)
    return 0
