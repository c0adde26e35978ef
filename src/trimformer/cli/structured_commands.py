"""``trimformer structured`` (channels of a CNN checkpoint: AdaPruner, its baselines, OFAR) and ``trimformer heads``
(attention heads and MLP channels of a transformer checkpoint): both write a physically smaller checkpoint.

Two commands rather than one: they take different models (a CNN of :mod:`trimformer.vision.cnn` vs a BERT / ViT
checkpoint), different data (whole image tensors in the CNN's own normalisation vs the text / image datasets of
the other transformer commands) and share no method setting besides the FLOPs target.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from torch import nn

from trimformer.checkpoint import CNN_MODEL_CLASSES, is_checkpoint, load, read_meta, save, save_pruned
from trimformer.cli.commands import _emit, _pct
from trimformer.cli.inputs import data_name, load_model_for, resolve_model_name, split_data
from trimformer.cli.structured_options import structured_config
from trimformer.cli.summary import print_table
from trimformer.data.cnn_images import CNNInput, load_cnn_images
from trimformer.structured import OFARConfig, count_macs, load_ofar, save_ofar
from trimformer.structured.adapruner import sparse_train_
from trimformer.structured.baselines import magnitude_uniform, network_slimming
from trimformer.structured.ofar_masks import resize
from trimformer.structured.ofar_store import OFAR_FILE
from trimformer.structured.record import StructuredResult
from trimformer.structured.store import STRUCTURE_FILE
from trimformer.structured.train import accuracy
from trimformer.structured_pruning import structured_prune
from trimformer.vision.cnn import MobileNetCNN, count_parameters


def _cnn_checkpoint(path: Path) -> str:
    """'ofar' for an OFAR family, 'cnn' for a dense CNN checkpoint; a clear error for anything else."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (give the folder trimformer.save wrote for a CNN, or "
                                "the OFAR family folder this command wrote)")
    if (path / OFAR_FILE).is_file():
        return "ofar"
    if (path / STRUCTURE_FILE).is_file():
        raise ValueError(f"{path} is already structurally pruned; prune the dense checkpoint it came from")
    if not is_checkpoint(path):
        raise ValueError(f"{path} is not a trimformer checkpoint (no trimformer.json); save the CNN with "
                         "trimformer.save first")
    meta = read_meta(path)
    if meta["model_class"] not in CNN_MODEL_CLASSES:
        raise ValueError(f"{path} holds a transformer ({meta['model_class']}); structured prunes the channels of a "
                         "CNN. Prune a transformer's attention heads and MLP channels with: trimformer heads "
                         f"{path} --target-flops F --out DIR")
    if meta.get("quant_config"):
        raise ValueError(f"{path} is quantized; prune the float checkpoint, then quantize")
    if meta.get("batchnorm_folded"):
        raise ValueError(f"{path} has its batch norms folded into the convolutions; the methods read batch norms: "
                         "prune the unfolded checkpoint")
    return "cnn"


def _cnn_input(model: nn.Module) -> CNNInput:
    if not isinstance(model, MobileNetCNN):
        raise ValueError(f"structured takes trimformer's MobileNetCNN checkpoints; got a {type(model).__name__}")
    c = model.config
    return CNNInput(c.in_channels, c.image_size, c.input_mean, c.input_std)


def _data(args: argparse.Namespace, spec: CNNInput, num_classes: int, labels: list[str] | None):
    """(train, test or None) image tensors of --data / --eval-data, checked against the model's classes."""
    train_x, train_y, names = load_cnn_images(args.data, "train", spec, args.train_subset, args.seed)
    if len(names) != num_classes or (labels is not None and list(labels) != names):
        raise ValueError(f"--data {args.data} has the classes {names} and the model has "
                         f"{labels if labels is not None else f'{num_classes} outputs'}; give data of its classes")
    if args.accuracy_limit == 0:
        return (train_x, train_y), None
    limit = None if args.accuracy_limit == "all" else args.accuracy_limit
    test_x, test_y, _ = load_cnn_images(args.eval_data or args.data, "test", spec, limit)
    return (train_x, train_y), (test_x, test_y)


def _slimming(model: nn.Module, config: Any, train, progress: bool) -> StructuredResult:
    """Network slimming: sparse training (the config's l1_penalty, sparse_steps), then the global BN threshold."""
    sparse = copy.deepcopy(model)
    sparse_train_(sparse, config, train, progress)
    return network_slimming(sparse.eval(), config.target_flops, train, config.finetune_steps, config.lr,
                            config.batch_size, config.seed, config.calibration_batches, config.tolerance)


def _prune(method: str, model: nn.Module, config: Any, train, test) -> StructuredResult:
    if method == "magnitude":
        return magnitude_uniform(model, config.target_flops, train, config.finetune_steps, config.lr,
                                 config.batch_size, config.seed, config.calibration_batches, config.tolerance)
    if method == "slimming":
        return _slimming(model, config, train, progress=True)
    return structured_prune(model, config, train, test if method == "ofar" else None)


def _check_out(out: Path, overwrite: bool, marker: str) -> None:
    """Refuse --out up front (not after the training): it must be new, or a checkpoint of this kind (``marker``
    file) with --overwrite."""
    if out.exists() or out.is_symlink():
        if not (out.is_dir() and not out.is_symlink() and (out / marker).is_file()):
            raise ValueError(f"--out {out} exists and is not a checkpoint of this command (no {marker}): it is never "
                             "replaced; choose "
                             "another output path")
        if not overwrite:
            raise ValueError(f"--out {out} already holds a checkpoint; pass --overwrite to replace it, or choose "
                             "another output path")


def run_structured(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    kind = _cnn_checkpoint(path)
    if kind == "ofar":
        _check_out(Path(args.out), args.overwrite, STRUCTURE_FILE)
        return _extract(args, path)
    args.method = args.method or "adapruner"
    _check_out(Path(args.out), args.overwrite, OFAR_FILE if args.method == "ofar" else STRUCTURE_FILE)
    if args.rate is not None or args.resolution is not None:
        raise ValueError("--rate and --resolution extract a sub-network from an OFAR family checkpoint; "
                         f"{path} is a dense CNN: leave them out (train a family with --method ofar first)")
    config = structured_config(args)
    model, meta = load(path)
    spec = _cnn_input(model)
    train, test = _data(args, spec, model.config.num_classes, meta.get("label_names"))
    example = train[0][:1]
    result = _prune(args.method, model, config, train, test)
    summary: dict[str, Any] = {"checkpoint": str(path), "method": args.method, "config": config.to_dict(),
                               "data": args.data, "train_images": len(train[1]),
                               "params_dense": count_parameters(model), "macs_dense": count_macs(model, example)[0]}
    if isinstance(config, OFARConfig):
        save_ofar(result, args.out, overwrite=args.overwrite)
        summary.update(subnets={k: {"macs": v["macs"], "flops_fraction": v["flops_fraction"]}
                                for k, v in result.report["subnets"].items()},
                       test_accuracy=result.report.get("val_accuracy"), saved=args.out)
        print_table("structured (ofar family)", [("checkpoint", path), ("rates", config.rates),
                                                 ("resolutions", config.resolutions), ("saved", args.out),
                                                 ("extract", f"trimformer structured {args.out} --rate R "
                                                             "--resolution S --out DIR")])
        return _emit(summary, args.json)
    small = result.model
    summary.update(params=count_parameters(small), macs=count_macs(small, example)[0])
    summary["flops_fraction"] = summary["macs"] / summary["macs_dense"]
    if test is not None:
        summary.update(accuracy_dense=100 * accuracy(model, test), accuracy=100 * accuracy(small, test),
                       test_images=len(test[1]))
    save(small, args.out, extra={"recipe": {"method": args.method, "config": config.to_dict(), "data": args.data,
                                            "base": str(path)}, "label_names": meta.get("label_names")},
         overwrite=args.overwrite)
    summary["saved"] = args.out
    _structured_table(summary)
    return _emit(summary, args.json)


def _structured_table(s: dict[str, Any]) -> None:
    print_table(f"structured ({s['method']})", [
        ("checkpoint", s["checkpoint"]),
        ("parameters", f"{s['params']:,} of {s['params_dense']:,}"),
        ("FLOPs", f"{s['flops_fraction']:.1%} of dense"),
        ("accuracy", f"{_pct(s.get('accuracy'))} (dense {_pct(s.get('accuracy_dense'))})"),
        ("saved", s["saved"])])


def _extract(args: argparse.Namespace, path: Path) -> int:
    """An OFAR family checkpoint: --rate / --resolution choose the sub-network, written as a smaller checkpoint."""
    if args.method is not None or any(getattr(args, f, None) is not None for f in ("target_flops", "rates")):
        raise ValueError(f"{path} is an OFAR family: it takes --rate and --resolution (and data) to extract a "
                         "sub-network, not --method or budgets")
    family = load_ofar(path)
    if args.rate is None or args.resolution is None:
        raise ValueError(f"{path} is an OFAR family: give --rate (one of {sorted(family.structures)}) and "
                         f"--resolution (one of {list(family.config.resolutions)}) to extract a sub-network")
    spec = _cnn_input(family.model)
    train, test = _data(args, spec, family.model.config.num_classes, None)
    small = family.subnet(args.rate, args.resolution, train)
    example = resize(train[0][:1], args.resolution)
    dense_example = resize(train[0][:1], family.config.largest)
    summary: dict[str, Any] = {"checkpoint": str(path), "method": "ofar", "rate": args.rate,
                               "resolution": args.resolution, "data": args.data,
                               "params_dense": count_parameters(family.model), "params": count_parameters(small),
                               "macs_dense": count_macs(family.model, dense_example)[0],
                               "macs": count_macs(small, example)[0]}
    summary["flops_fraction"] = summary["macs"] / summary["macs_dense"]
    if test is not None:
        summary.update(accuracy_dense=100 * accuracy(family.model, (resize(test[0], family.config.largest),
                                                                    test[1])),
                       accuracy=100 * accuracy(small, (resize(test[0], args.resolution), test[1])),
                       test_images=len(test[1]))
    save(small, args.out, extra={"recipe": {"method": "ofar", "family": str(path), "rate": args.rate,
                                            "resolution": args.resolution}, "resolution": args.resolution},
         overwrite=args.overwrite)
    summary["saved"] = args.out
    _structured_table(summary)
    return _emit(summary, args.json)


def run_heads(args: argparse.Namespace) -> int:
    from trimformer.data.batching import calibration_batches
    from trimformer.data.images import image_collate
    from trimformer.data.text import text_collate
    from trimformer.heads import HeadPruningConfig, prune_heads_

    path = resolve_model_name(args.checkpoint)
    _refuse_cnn(Path(path))
    config = HeadPruningConfig(target_flops=args.target_flops, criterion=args.criterion,
                               calibration_batches=args.calibration_batches, prune_heads=args.prune_heads,
                               prune_mlp=args.prune_mlp, mlp_multiple=args.mlp_multiple)
    loaded = load_model_for(args, path)
    train = split_data(args, loaded, "train")
    collate = text_collate(loaded.tokenizer, args.max_length) if loaded.task == "text" else image_collate
    batches = calibration_batches(train, collate, args.batch_size, args.calibration_batches, seed=args.seed)
    params_dense = count_parameters(loaded.model.model)
    heads_dense = loaded.model.model.config.num_attention_heads * loaded.model.model.config.num_hidden_layers
    result = prune_heads_(loaded.model, config, batches)
    plan = result.plan
    summary = {"checkpoint": args.checkpoint, "task": loaded.task, "config": config.to_dict(),
               "data": data_name(args), "heads_dense": heads_dense,
               "flops_fraction": plan.flops_ratio, "mean_length": plan.length,
               "heads_kept": [len(h) for h in plan.heads], "mlp_kept": [len(c) for c in plan.channels],
               "params_dense": params_dense, "params": count_parameters(loaded.model.model), "saved": args.out}
    extra: dict[str, Any] = {"recipe": {"method": "heads", "config": config.to_dict(), "data": data_name(args),
                                        "base": args.checkpoint}}
    for key in ("resolution", "label_names"):
        if loaded.meta.get(key) is not None:
            extra[key] = loaded.meta[key]
    save_pruned(loaded.model, args.out, loaded.tokenizer, extra=extra, overwrite=args.overwrite)
    print_table("heads", [("checkpoint", args.checkpoint),
                          ("heads kept", f"{sum(summary['heads_kept'])} of {heads_dense}"),
                          ("parameters", f"{summary['params']:,} of {params_dense:,}"),
                          ("encoder FLOPs", f"{plan.flops_ratio:.1%} of dense (at the data's mean length)"),
                          ("saved", args.out), ("evaluate", f"trimformer eval {args.out}")])
    return _emit(summary, args.json)


def _refuse_cnn(path: Path) -> None:
    """heads takes transformers: a CNN (dense, structurally pruned or an OFAR family) is refused, naming the
    command for it."""
    cnn = (path / STRUCTURE_FILE).is_file() or (path / OFAR_FILE).is_file() or \
        (is_checkpoint(path) and read_meta(path)["model_class"] in CNN_MODEL_CLASSES)
    if cnn:
        raise ValueError(f"{path} holds a CNN; heads prunes the attention heads and MLP channels of a transformer. "
                         f"Prune a CNN's channels with: trimformer structured {path} --method adapruner "
                         "--target-flops F --out DIR")
