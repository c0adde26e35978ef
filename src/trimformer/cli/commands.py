"""The CLI sub-commands, one implementation each for text and vision (each takes the parsed arguments and returns
an exit code); the task is read from the model or checkpoint (``--task`` only where nothing says)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from trimformer.bench import benchmark
from trimformer.checkpoint import is_checkpoint, label_names, load_model, save, save_pruned
from trimformer.cli.inputs import (
    DEFAULT_METHOD,
    data_name,
    fit_max_length,
    image_label_names,
    load_model_for,
    refuse_later_stage,
    resolve_model_name,
    set_level,
    settle_task,
    split_data,
    text_only,
    train_config,
)
from trimformer.cli.options import DEFAULTS_KEY, refuse, settle
from trimformer.cli.summary import print_table
from trimformer.data.images import image_collate, load_image_data
from trimformer.data.labels import require_classes
from trimformer.data.text import load_text_data, text_collate
from trimformer.evaluation import evaluate
from trimformer.fitting import fit
from trimformer.io_utils import atomic_write_json, check_report_path
from trimformer.loading import load_vision_model, model_resolution, vision_classifier, vision_config
from trimformer.methods import method_named, registered_methods
from trimformer.pruning import prune
from trimformer.train.finetune import finetune_dense
from trimformer.train.loop import epochs_to_steps, is_main_process
from trimformer.train.recipes import FINETUNE_RECIPES
from trimformer.train.state import discard_state

# prune's options that only a trained method uses (refused with ToMe / EViT): a new training or data option goes here
TRAINING_OPTIONS = ("data", "batch_size", "lr", "train_subset", "seed", "resume", "restart", "max_length", "columns",
                    "label_type")
DINOV2_S_RESOLUTION = 112  # 8 x 8 patches of 14 px: the resolution the DINOv2 recipe was measured at


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
    return {"model": args.model, "data": data_name(args), "eval_data": getattr(args, "eval_data", None)}


def _finish(args: argparse.Namespace, state_dir: Path | None) -> None:
    """After the checkpoint is saved, the finished run's training state goes (nothing is left to resume)."""
    if state_dir is not None:
        discard_state(state_dir)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def run_finetune(args: argparse.Namespace) -> int:
    path = resolve_model_name(args.model)
    refuse_later_stage(path, "fine-tune")
    task = settle_task(args, path)
    explicit_length = args.max_length is not None
    settle(args, task, [*text_only(args, "max_length", "columns", "label_type"),
                        ("resolution", task == "vision", "to text models")])
    config = train_config(args, **{k: v for k, v in FINETUNE_RECIPES[task].items() if k != "lr"})
    if task == "text":
        train = load_text_data(data_name(args), "train", columns=args.columns, label_type=args.label_type)
        require_classes(train.label_names, data_name(args))
        head = {"label_names": train.label_names} if train.label_names is not None else {"num_labels": 1}
        model, tokenizer, _ = load_model(path, seed=args.seed, **head)
        fit_max_length(args, model.model.config, explicit_length)
        config = dataclasses.replace(config, max_length=args.max_length)
        model, processor, extra = model.model, tokenizer, {}
        collate = text_collate(tokenizer, config.max_length)
    else:
        base = _dense_vision_checkpoint(path) if is_checkpoint(path) else None
        resolution = _check_resolution(base.config if base is not None else vision_config(path),
                                       args.resolution or (DINOV2_S_RESOLUTION if args.model == "dinov2-s" else None))
        train = load_image_data(data_name(args), "train", resolution)
        names = image_label_names(train)
        require_classes(names, data_name(args))
        model = _vision_model_to_finetune(args.model, path, names, base)
        processor, collate = None, image_collate
        extra = {"resolution": resolution, "label_names": names}
    train = train.subset(args.train_subset, seed=args.seed) if task == "text" else \
        _image_subset(train, args.train_subset, args.seed)
    steps = epochs_to_steps(len(train), config.batch_size, args.epochs)
    state_dir = _state_dir(args)
    logs = finetune_dense(model.train(), train, collate, config, steps, state_dir, restart=args.restart,
                          about=_about(args))
    if is_main_process():
        recipe = {"stage": "finetune", "task": task, "model": args.model, "data": data_name(args),
                  "epochs": args.epochs, "steps": steps, "train_examples": len(train), "train": config.to_dict(),
                  "final_loss": logs[-1]["loss"] if logs else None}
        save(model.eval(), args.out, processor=processor, extra={"recipe": recipe, **extra},
             overwrite=args.overwrite)
        _finish(args, state_dir)
        print_table("finetune", [("model", args.model), ("task", task), ("data", data_name(args)),
                                 ("training examples", len(train)), ("steps", steps),
                                 ("final loss", "-" if not logs else f"{logs[-1]['loss']:.4f}"),
                                 ("saved", args.out)])
    return 0


def _dense_vision_checkpoint(path: str):
    """The transformers model of a dense, unquantized vision checkpoint of trimformer (to fine-tune further)."""
    loaded, meta = load_vision_model(path)
    if meta.get("method", "dense") != "dense" or meta.get("quant_config"):
        raise ValueError(f"{path} is a pruned or quantized checkpoint; fine-tune the dense model it came from")
    return loaded.model


def _vision_model_to_finetune(name: str, path: str, names: list[str], base=None):
    """The image classifier to fine-tune on classes ``names``: ``dinov2-s`` (the converted backbone, a new head),
    ``base`` (a dense checkpoint of trimformer with the same classes), or a transformers folder / hub name (a new
    head when the classes differ)."""
    if base is not None:
        stored = [base.config.id2label[i] for i in range(base.config.num_labels)]
        if stored != names:
            raise ValueError(f"{path} classifies {stored} and the data has the classes {names}; fine-tune the model "
                             "it came from on this data")
        return base
    if name == "dinov2-s":
        from trimformer.vision.dinov2_onnx import dinov2_classifier

        return dinov2_classifier(len(names), id2label=dict(enumerate(names)))
    return vision_classifier(path, names)


def _check_resolution(config, resolution: int | None) -> int:
    """``--resolution`` against the model's config: a multiple of its patch size; ViT/DeiT only at their size."""
    if resolution is None:
        return int(config.image_size)
    patch = int(config.patch_size)
    if resolution % patch:
        raise ValueError(f"--resolution {resolution} is not a multiple of the model's {patch} px patch; use e.g. "
                         f"{max(patch, resolution - resolution % patch)}")
    if config.model_type != "dinov2" and resolution != config.image_size:
        raise ValueError(f"--resolution {resolution}: a {config.model_type} model runs at its config's "
                         f"{config.image_size} px only (Dinov2 interpolates); leave --resolution out")
    return resolution


def _image_subset(data, n: int | None, seed: int):
    """The seeded sample of ``n`` images that ``TextDataset.subset`` takes of texts (all of them when None)."""
    if n is None or n >= len(data):
        return data
    from torch.utils.data import Subset

    from trimformer.data.batching import sample_indices

    return Subset(data, sample_indices(len(data), n, seed))


def run_prune(args: argparse.Namespace) -> int:
    from trimformer.cli.method_options import method_config

    path = resolve_model_name(args.model)
    task = settle_task(args, path)
    args.method = args.method or DEFAULT_METHOD[task]
    spec = method_named(args.method)
    if task not in spec.tasks:
        fitting = [s.name for s in registered_methods() if task in s.tasks]
        raise ValueError(f"--method {args.method} is a {' / '.join(spec.tasks)} method and {args.model} is a "
                         f"{task} model: --task {task} takes --method {' | '.join(fitting)}")
    config = method_config(args, spec)
    training_free = f"to --method {spec.name}, which is training free"
    loaded = load_model_for(args, path, [(n, spec.fit is not None, training_free) for n in TRAINING_OPTIONS])
    refuse_later_stage(args.model, "prune", loaded.meta)
    model = prune(loaded.model.model, config)
    recipe: dict = {"base_model": args.model}
    if spec.fit is not None:
        train = split_data(args, loaded, "train", args.train_subset, seed=args.seed)
        train_settings = train_config(args)
        history = fit(model, train, train_settings, tokenizer=loaded.tokenizer, state_dir=_state_dir(args),
                      restart=args.restart, about=_about(args))
        recipe.update(data=data_name(args), train=train_settings.to_dict(), train_examples=len(train),
                      **{k: v for k, v in history.items() if k not in ("soft", "hard", "train")})
    if is_main_process():
        extra: dict = {"recipe": recipe}
        if task == "vision":
            extra.update(resolution=model_resolution(loaded.model, loaded.meta),
                         label_names=loaded.meta.get("label_names") or label_names(loaded.model))
        save_pruned(model, args.out, loaded.tokenizer, extra=extra, overwrite=args.overwrite)
        _finish(args, _state_dir(args) if spec.fit is not None else None)
        print_table("prune", [("model", args.model), ("method", spec.name),
                              *((k, v) for k, v in config.to_dict().items()),
                              ("trained on", recipe.get("data", "- (training free)")), ("saved", args.out)])
    return 0


def run_methods(args: argparse.Namespace) -> int:
    from trimformer.cli.method_options import methods_listing

    print(methods_listing(), end="")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    loaded = load_model_for(args, resolve_model_name(args.checkpoint))
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
    print_table("eval", [("checkpoint", args.checkpoint), ("method", summary["method"]),
                         ("data", f"{summary['data']} ({result.num_examples} examples)"),
                         ("accuracy", _pct(result.accuracy)),
                         ("GFLOPs / example", f"{result.gflops_per_sample:.3f} of {result.dense_gflops_per_sample:.3f}"
                                              f" dense ({result.flops_ratio:.1%})"),
                         *((("level", summary["level"]),) if "level" in summary else ())])
    return _emit(summary, args.json)


def run_bench(args: argparse.Namespace) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_model_for(args, resolve_model_name(args.checkpoint),
                            [("accuracy_limit", not args.no_accuracy, "with --no-accuracy")])
    if loaded.meta.get("method", "dense") == "dense":
        what = "a quantized dense" if loaded.meta.get("quant_config") else "a dense"
        raise ValueError(f"{args.checkpoint} is {what} model: bench compares a token-pruned checkpoint with its "
                         "dense self (quantization is simulated in float, so it has no speed of its own); use eval")
    set_level(loaded, args.level)
    loaded.model.set_options(regroup=not args.no_regroup, linear_kernel=args.linear_kernel)
    test = split_data(args, loaded, "test")
    record = benchmark(loaded.model, test, args.batch_size, tokenizer=loaded.tokenizer, max_length=args.max_length,
                       num_samples=args.num_samples, repeats=args.repeats, accuracy=not args.no_accuracy,
                       accuracy_limit=args.accuracy_limit, runtime=args.runtime)
    record = {"checkpoint": args.checkpoint, "data": args.eval_data or data_name(args), "task": loaded.task,
              "regroup": not args.no_regroup, "linear_kernel_requested": args.linear_kernel,
              "threads_requested": args.threads, "interop_threads": torch.get_num_interop_threads(),
              "torch": torch.__version__, **record}
    _bench_table(record)
    return _emit(record, args.json)


def _bench_table(record: dict) -> None:
    latency = record["latency_ms"]
    rows = [("transformers dense", record["transformers_dense_samples_per_s"], latency["dense"],
             record.get("accuracy_dense"), record["gflops_dense"]),
            ("trimformer dense", record["engine_dense_samples_per_s"], latency["engine_dense"], None, None),
            (f"pruned ({record['method']})", record["pruned_samples_per_s"], latency["packed"],
             record.get("accuracy_pruned"), record["gflops_pruned"])]
    if "masked_samples_per_s" in record:
        rows.append(("pruned, masked only", record["masked_samples_per_s"], latency["masked"], None, None))
    print_table(f"bench: batch {record['batch_size']}, {record['threads']} threads, {record['repeats']} repeats, "
                f"runtime {record['runtime']}",
                [(name, f"{speed:.1f}", f"{ms:.1f}", _pct(acc), "-" if gf is None else f"{gf:.3f}")
                 for name, speed, ms, acc, gf in rows if speed is not None],
                header=("variant", "examples/s", "latency ms", "accuracy", "GFLOPs/ex"),
                footer=f"speed-up {record['speedup']:.2f}x over {record['dense_baseline']} at "
                       f"{record['flops_ratio']:.1%} of the dense FLOPs")


def run_export(args: argparse.Namespace) -> int:
    from trimformer.data.batching import calibration_batches, fixed_batches
    from trimformer.data.images import image_collate
    from trimformer.export import export_onnx, onnx_accuracy, session

    loaded = load_model_for(args, args.checkpoint)
    set_level(loaded, args.level)
    collate = text_collate(loaded.tokenizer, args.max_length) if loaded.task == "text" else image_collate
    calibration = None
    if args.int8 == "qdq":
        calibration = calibration_batches(split_data(args, loaded, "train"), collate, 32, args.calib_batches)
    check = fixed_batches(split_data(args, loaded, "test", args.check), collate, args.check)[0] if args.check else None
    resolution = model_resolution(loaded.model, loaded.meta) if loaded.task == "vision" else None
    report = export_onnx(loaded.model, args.out, int8=args.int8, calibration=calibration, check_inputs=check,
                         resolution=resolution, overwrite=args.overwrite).to_dict()
    report["check"].pop("kept_tokens", None)
    if args.accuracy_limit:
        limit = None if args.accuracy_limit == "all" else args.accuracy_limit
        test = split_data(args, loaded, "test", limit)
        report["onnx_accuracy"] = onnx_accuracy(session(args.out), fixed_batches(test, collate, 32, labels=True))
    return _emit({"checkpoint": args.checkpoint, **report}, args.json)


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
    defaults = getattr(args, DEFAULTS_KEY)

    def value(name: str):
        given = getattr(args, name)
        return defaults[name] if given is None else given

    if not args.abits:
        refuse(args, ["act_clip", "act_scheme"], "with --abits 0 (weights only)")
    if args.scheme != "pwlq" and value("act_scheme") != "pwlq":
        refuse(args, ["region_bit"], f"to --scheme {args.scheme} with {value('act_scheme')} activations")
    act = (ActSpec(bits=args.abits, clip=value("act_clip"), scheme=value("act_scheme"),
                   region_bit=value("region_bit")) if args.abits else None)
    kwargs = {"wbits": args.wbits, "act": act, "per_channel": not args.per_tensor, "exclude": list(args.exclude),
              "layer_wbits": parse_layer_bits(args.layer_wbits)}
    if args.bias_correction is not None:
        kwargs["bias_correction"] = args.bias_correction
    if args.pow2_scale:
        kwargs["pow2_scale"] = True
    if "region_bit" in fields:
        kwargs["region_bit"] = value("region_bit")
    given = {**vars(args), "calib_samples": args.calib_images}
    for name in ("breakpoint", "num_breakpoints", "weight_clip", "iters", "calib_samples", "recon_loss"):
        if given[name] is None:
            continue
        if name not in fields:
            flag = "calib-images" if name == "calib_samples" else name.replace("_", "-")
            raise ValueError(f"--{flag} does not apply to --scheme {args.scheme}")
        kwargs[name] = given[name]
    return cls(**kwargs)


def run_quantize(args: argparse.Namespace) -> int:
    from trimformer.quant_pipeline import quantize_checkpoint

    config = quant_config_from_args(args)
    loaded = load_model_for(args, resolve_model_name(args.checkpoint))
    calib = split_data(args, loaded, "train")
    test = split_data(args, loaded, "test", args.limit)
    report = quantize_checkpoint(loaded, str(args.checkpoint), config, calib, test, args.out,
                                 max_length=args.max_length, calib_batches=args.calib_batches,
                                 overwrite=args.overwrite)
    print_table("quantize", [("checkpoint", args.checkpoint), ("scheme", f"{args.scheme} W{args.wbits}A{args.abits}"),
                             ("accuracy float", _pct(report.get("accuracy_fp"))),
                             ("accuracy quantized", _pct(report.get("accuracy_quant"))),
                             ("size", f"{report['size_bytes_quant'] / 2**20:.2f} MiB of "
                                      f"{report['size_bytes_fp32'] / 2**20:.2f} MiB float32"),
                             ("saved", args.out)])
    return _emit(report, args.json)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "results.json").is_file())):
        raise ValueError(f"{out} exists and is not a demo output folder (no results.json): the demo writes its "
                         "checkpoints, plots and report there and never replaces a user's files; choose another --out")
    settle(args, args.task, [("target_flops", args.task == "text", "to the vision demo (its SaiT checkpoint is run "
                                                                   "at several levels)")])
    if args.task == "vision":
        from trimformer.report.vision_demo import run_vision_demo

        run_vision_demo(Path(args.out), fast=args.fast)
        return 0
    from trimformer.report.text_demo import run_demo as demo

    demo(Path(args.out), target_flops=args.target_flops, fast=args.fast)
    return 0
