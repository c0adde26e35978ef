"""The ``trimformer`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from trimformer import __version__
from trimformer.assets import OFFLINE_MODELS
from trimformer.cli.options import (
    DEFAULTS_KEY,
    LazyParser,
    add,
    count_or_all,
    fraction,
    json_path,
    nonnegative_int,
    open_fraction,
    positive_float,
    positive_int,
)
from trimformer.train.recipes import FINETUNE_RECIPES


def _add_train_options(p: argparse.ArgumentParser, d: dict, lr: float | Mapping[str, float]) -> None:
    """Training settings; with ``prune`` they apply to the trained methods only (refused with ToMe / EViT)."""
    g = p.add_argument_group("training")
    add(g, d, "--batch-size", type=positive_int, default=32, help="global batch size")
    add(g, d, "--lr", type=positive_float, default=lr, help="learning rate of the model weights")
    _add_max_length(g, d)
    add(g, d, "--train-subset", type=positive_int, default=None, shown="all", metavar="N",
        help="train on a seeded random subset of N examples")
    add(g, d, "--seed", type=nonnegative_int, default=0, help="random seed")
    add(g, d, "--resume", action="store_const", const=True, default=False,
        help="save the training state in OUT.state and continue from it after an interruption; a state saved for "
             "another model, data set or recipe is refused (see --restart)")
    add(g, d, "--restart", action="store_const", const=True, default=False,
        help="discard the training state in OUT.state (if any) and train from the start, saving state as --resume "
             "does")


def _add_out_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--out", required=True, help=help_text)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint already at --out (only a folder trimformer wrote is ever replaced)")


def _add_max_length(p: argparse.ArgumentParser | Any, d: dict) -> None:
    add(p, d, "--max-length", type=positive_int, default=128, help="text: tokens per text after truncation")


def _add_data_options(p: argparse.ArgumentParser, d: dict, eval_data: bool = True) -> None:
    """--data (and --eval-data) with the text-file options --columns and --label-type (text models only)."""
    p.add_argument("--data", default=None,
                   help="text: 'rotten_tomatoes' (default), '20newsgroups' (built in, offline), a .csv/.tsv/.jsonl/"
                        ".parquet file with 'text' (and 'text_pair') and 'label' columns, a datasets folder or hub "
                        "name (see docs/data.md); vision: 'fashion_mnist' (default, offline) or an image folder "
                        "root/<class>/<images>")
    if eval_data:
        p.add_argument("--eval-data", default=None, help="evaluation file (text) or image folder (vision) when "
                                                        "--data is a file / folder")
    add(p, d, "--columns", default=None, shown="text, text_pair when present, label", metavar="TEXT[,PAIR],LABEL",
        help="text files: the columns holding the text, the second text of a pair (optional) and the label, e.g. "
             "premise,hypothesis,label")
    add(p, d, "--label-type", choices=("auto", "class", "regression"), default="auto",
        help="text files: labels are classes or regression targets; auto: fractional numbers are targets, anything "
             "else classes")


def _add_task_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("text", "vision"), default=None,
                   help="text (BERT-family classifiers) or vision (ViT/DeiT/Dinov2): read from the checkpoint or the "
                        "model folder's config, and then must agree with it; needed only for a hub name of a vision "
                        "model (default text)")


def _add_kernel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--linear-kernel", choices=("auto", "onednn", "torch"), default="auto",
                   help="inference linears on a CPU in float32: auto (oneDNN on packed weights for weights of "
                        "1 MiB or more, where this PyTorch has it; PyTorch's F.linear for the rest), onednn (pack "
                        "every weight) or torch (F.linear everywhere). The dense run inside trimformer uses the "
                        "same kernel (default auto)")


def _add_json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", type=json_path, default=None, help=f"also write {what} to this JSON file")


def _add_run_options(p: argparse.ArgumentParser, d: dict, checkpoint_help: str) -> None:
    """What eval and bench share: the checkpoint, its task and level, the data and the text length."""
    p.add_argument("checkpoint", help=checkpoint_help)
    _add_task_option(p)
    p.add_argument("--level", type=fraction, default=None,
                   help="SaiT checkpoints: sparsity level to run at (keep rate or importance mass in (0, 1]; "
                        "default: the level saved with it, prune --default-level)")
    _add_data_options(p, d)
    _add_max_length(p, d)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    from trimformer.cli.method_options import add_method_options

    add_method_options(p)


def _add_structured_options(p: argparse.ArgumentParser) -> None:
    from trimformer.cli.structured_options import add_structured_options

    add_structured_options(p)


def _model_help(default: str | None) -> str:
    names = ", ".join(f"'{k}' (offline {v})" for k, v in OFFLINE_MODELS.items())
    return f"{names}, a trimformer checkpoint, a local folder or a hub name" + (f" (default {default})"
                                                                                if default else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimformer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trimformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=LazyParser)

    d: dict = {}
    p = sub.add_parser("finetune", help="fine-tune a text (BERT/RoBERTa) or vision (ViT/DeiT/Dinov2) classifier: "
                                        "the dense starting point")
    p.add_argument("--model", default="minilm", help=_model_help("minilm"))
    _add_task_option(p)
    _add_data_options(p, d, eval_data=False)
    p.add_argument("--epochs", type=positive_float, default=1.0, help="passes over the training data (default 1)")
    add(p, d, "--resolution", type=positive_int, default=None, shown="the model's; dinov2-s 112",
        help="vision: input side in pixels, a multiple of the patch size (Dinov2 interpolates its position "
             "embeddings; ViT/DeiT need their config's size)")
    _add_out_option(p, "output folder (a trimformer checkpoint of the dense model)")
    _add_train_options(p, d, lr=MappingProxyType({t: FINETUNE_RECIPES[t]["lr"] for t in FINETUNE_RECIPES}))
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})

    d = {}
    p = sub.add_parser("prune", help="learn token pruning (text: LTP, top-k; vision: SaiT, AS-ViT; both: EViT, "
                                     "ToMe)")
    p.add_argument("--model", required=True, help="fine-tuned classifier: trimformer checkpoint, local folder or "
                                                  "hub name")
    _add_task_option(p)
    _add_data_options(p, d, eval_data=False)
    _add_out_option(p, "output folder of the pruned checkpoint")
    p.populate_with(_add_method_options)  # the method registry imports torch: only when prune is parsed
    _add_train_options(p, d, lr=2e-5)
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})

    p = sub.add_parser("structured", help="structured pruning of a CNN checkpoint: channels removed to a FLOPs budget "
                                          "(AdaPruner, magnitude, network slimming, or an OFAR family and its "
                                          "sub-networks)")
    p.add_argument("checkpoint", help="a CNN checkpoint written by trimformer.save (MobileNetCNN), or an OFAR family "
                                      "folder written by --method ofar (then --rate and --resolution extract one "
                                      "sub-network)")
    p.add_argument("--method", choices=("adapruner", "magnitude", "slimming", "ofar"), default=None,
                   help="adapruner (default): sparse training, importance-scaled widths, the best inheritance "
                        "criterion, fine-tuning; magnitude: one width ratio, group L1 ranking; slimming: one global "
                        "threshold on sparse-trained batch-norm scales; ofar: one training for a family of "
                        "sub-networks over --rates x --resolutions, written as one family checkpoint")
    p.add_argument("--rate", type=fraction, default=None,
                   help="OFAR family checkpoint: the FLOPs budget of the sub-network to extract (one of its rates)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="OFAR family checkpoint: the input size of the sub-network to extract (one of its "
                        "resolutions); the saved sub-network expects inputs of that size")
    p.add_argument("--data", default="fashion_mnist",
                   help="'fashion_mnist' (default, offline) or an image folder root/<class>/<images>; images are "
                        "converted to the CNN's channels, size and normalisation")
    p.add_argument("--eval-data", default=None, help="image folder of the test images when --data is a folder "
                                                     "(default: --data)")
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on a seeded random subset of N training images (default all)")
    p.add_argument("--accuracy-limit", type=count_or_all, default="all", metavar="N|all",
                   help="test accuracy of the dense and the pruned model on a seeded subset of N test images, 'all' "
                        "(default) or 0 (not measured)")
    _add_out_option(p, "output folder: the smaller checkpoint (trimformer.load reads it), or the OFAR family")
    p.populate_with(_add_structured_options)  # generated from the configs, which import torch
    _add_json_option(p, "the summary")

    d = {}
    p = sub.add_parser("heads", help="structured pruning of a text or vision transformer checkpoint: attention heads "
                                     "and MLP channels removed to a FLOPs budget")
    p.add_argument("checkpoint", help="a BERT-family or ViT-family classifier: trimformer checkpoint (dense or "
                                      "token-pruned, not quantized) or model folder")
    _add_task_option(p)
    _add_data_options(p, d, eval_data=False)
    _add_out_option(p, "output folder of the smaller checkpoint (trimformer eval / load read it)")
    p.add_argument("--target-flops", type=open_fraction, default=0.7,
                   help="wanted encoder FLOPs as a fraction of the model's, in (0, 1), at the calibration data's mean "
                        "length (default 0.7)")
    p.add_argument("--criterion", choices=("norm", "taylor"), default="norm",
                   help="unit importance: norm of its output contribution, or taylor (|d loss / d gate|, uses the "
                        "labels) (default norm)")
    p.add_argument("--calibration-batches", type=positive_int, default=8,
                   help="training batches the importance is measured on (default 8)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="calibration batch size (default 32)")
    p.add_argument("--prune-heads", action=argparse.BooleanOptionalAction, default=True,
                   help="remove attention heads (default on)")
    p.add_argument("--prune-mlp", action=argparse.BooleanOptionalAction, default=True,
                   help="remove MLP channels (default on)")
    p.add_argument("--mlp-multiple", type=positive_int, default=1,
                   help="each layer keeps a multiple of this many MLP channels (default 1)")
    _add_max_length(p, d)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the calibration sample (default 0)")
    _add_json_option(p, "the summary")
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})

    p = sub.add_parser("methods", help="list the pruning methods with their tasks, options and defaults")

    d = {}
    p = sub.add_parser("eval", help="accuracy, FLOPs and kept tokens of a checkpoint")
    _add_run_options(p, d, "pruned checkpoint folder, or a dense transformers model")
    p.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--mode", choices=("packed", "masked"), default="packed",
                   help="packed: tokens removed (default); masked: official LTP behaviour")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate on a seeded subset of N examples")
    _add_kernel_option(p)
    _add_json_option(p, "the results")
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})

    d = {}
    p = sub.add_parser("bench", help="measured throughput and latency: dense vs pruned, same run")
    _add_run_options(p, d, "pruned checkpoint folder")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size to time (default 32)")
    p.add_argument("--num-samples", type=positive_int, default=256, help="examples timed per repetition (default 256)")
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved timing repetitions (default 3)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    _add_kernel_option(p)
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy evaluation")
    add(p, d, "--accuracy-limit", type=positive_int, default=None, shown="all", metavar="N",
        help="compute the accuracies on a seeded subset of N test examples")
    p.add_argument("--no-regroup", action="store_true",
                   help="run each packed batch in one piece, padded to its longest row, instead of regrouping "
                        "rows by kept-token count (same outputs; for comparison)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "compile"), default="torch",
                   help="what runs the dense and pruned models: trimformer's engine (default), ONNX Runtime (both "
                        "exported, the pruning in the graph) or torch.compile (inductor); same JSON keys")
    _add_json_option(p, "the results")
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})

    d = {}
    p = sub.add_parser("quantize", help="post-training quantization (PWLQ or uniform) of a text or vision checkpoint")
    p.add_argument("checkpoint", help="fine-tuned classifier or pruned checkpoint folder (pruned stays pruned)")
    _add_task_option(p)
    _add_data_options(p, d)
    _add_out_option(p, "output folder of the quantized checkpoint")
    p.add_argument("--scheme", choices=("pwlq", "uniform", "adaround", "brecq", "rapq", "pwlq_adaround"),
                   default="pwlq", help="weight scheme (default pwlq); adaround, brecq, rapq and pwlq_adaround "
                   "learn the rounding on the calibration images (see docs/quantization.md)")
    p.add_argument("--iters", type=positive_int, default=None,
                   help="reconstruction schemes: optimisation steps per layer / block (default 1000)")
    p.add_argument("--calib-images", type=positive_int, default=None,
                   help="reconstruction schemes: calibration samples used for reconstruction (default 256)")
    p.add_argument("--recon-loss", choices=("mse", "fisher"), default=None,
                   help="reconstruction schemes: plain MSE of each unit's output, or BRECQ's Fisher-weighted MSE "
                        "(squared gradients of the float model's loss against its own predictions; one more "
                        "forward and backward per calibration batch and unit) (default mse)")
    p.add_argument("--wbits", type=positive_int, default=4,
                   help="weight bits (default 4); PWLQ stores one region bit more, see --region-bit")
    p.add_argument("--abits", type=nonnegative_int, default=8,
                   help="input-activation bits; 0 = weights only (default 8)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="data-free per-channel bias correction of the weights (default: on for pwlq and uniform, "
                        "off for the reconstruction schemes)")
    p.add_argument("--breakpoint", choices=("gaussian", "laplace", "search"), default=None,
                   help="PWLQ breakpoint: closed form for Gaussian/Laplacian weights, or MSE search (default "
                        "gaussian)")
    p.add_argument("--num-breakpoints", type=int, default=None, choices=(1, 2, 3),
                   help="PWLQ breakpoints per channel; more than 1 needs --breakpoint search (default 1)")
    add(p, d, "--region-bit", choices=("extra", "inside"), default="extra",
        help="PWLQ weights or activations: 'extra' stores the region bit on top of the bits (paper), 'inside' "
             "counts it within them")
    p.add_argument("--per-tensor", action="store_true", help="one weight range per tensor instead of per channel")
    p.add_argument("--weight-clip", choices=("minmax", "mse"), default=None,
                   help="uniform weights: clip at max|w| or at the MSE-optimal value (default minmax)")
    add(p, d, "--act-clip", choices=("topk_median", "percentile", "mse", "minmax"), default="topk_median",
        help="activation range rule (topk_median: median of the top-10 per batch, averaged)")
    add(p, d, "--act-scheme", choices=("uniform", "pwlq"), default="uniform",
        help="activations: asymmetric uniform, or PWLQ with a searched breakpoint")
    p.add_argument("--pow2-scale", action="store_true", help="round every scale up to a power of two")
    p.add_argument("--exclude", nargs="*", default=[], help="module-name globs left in float (e.g. 'classifier')")
    p.add_argument("--layer-wbits", nargs="*", default=[], metavar="GLOB=BITS",
                   help="per-layer weight bits, first match wins (e.g. 'classifier=8')")
    _add_max_length(p, d)
    p.add_argument("--calib-batches", type=positive_int, default=16,
                   help="calibration batches of 32 training texts / images (default 16)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate on a seeded subset of N test texts / images")
    _add_json_option(p, "the report")
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})

    d = {}
    p = sub.add_parser("export", help="export a checkpoint to ONNX, the pruning decision in the graph (tokens removed)")
    _add_run_options(p, d, "pruned (or dense, or quantized) checkpoint folder")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing .onnx file at --out")
    p.add_argument("--int8", nargs="?", const="dynamic", choices=("dynamic", "qdq"), default=None,
                   help="int8 weights per channel through ONNX Runtime: dynamic (quantize_dynamic, the default of "
                        "--int8: faster and more accurate than qdq as measured in docs/export.md) or qdq (static, "
                        "activations calibrated on --calib-batches training batches)")
    p.add_argument("--calib-batches", type=positive_int, default=8, help="qdq: calibration batches of 32 (default 8)")
    p.add_argument("--check", type=nonnegative_int, default=32,
                   help="compare the graph with PyTorch on N test inputs: kept tokens per block and logits "
                        "(default 32; 0: no check, and no data needed)")
    p.add_argument("--accuracy-limit", type=count_or_all, default=0, metavar="N|all",
                   help="also measure the graph's accuracy on a seeded subset of N test inputs, or 'all' (default 0: "
                        "not measured)")
    _add_json_option(p, "the export report")
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})

    d = {}
    p = sub.add_parser("demo", help="offline end-to-end demo: fine-tune, prune, evaluate, benchmark, report")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    add(p, d, "--target-flops", type=fraction, default=0.5, help="text: FLOPs target of LTP and top-k")
    p.add_argument("--fast", action="store_true", help="tiny settings for a smoke test (numbers are meaningless)")
    p.add_argument("--task", choices=("text", "vision"), default="text",
                   help="text: LTP on MiniLM / Rotten Tomatoes (default); vision: the sparsity dial of one SaiT "
                        "checkpoint on a small ViT / Fashion-MNIST")
    p.set_defaults(**{DEFAULTS_KEY: MappingProxyType(d)})
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trimformer.checkpoint import check_output_path
    from trimformer.cli import commands

    try:
        if args.command in ("finetune", "prune", "quantize", "heads"):
            check_output_path(args.out, args.overwrite)  # refused up front, not after minutes of training
        if args.command in ("structured", "heads"):
            from trimformer.cli import structured_commands as commands  # type: ignore[no-redef]
        return getattr(commands, f"run_{args.command}")(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"trimformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
