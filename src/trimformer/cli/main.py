"""The ``trimformer`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys

from trimformer import __version__


def _add_train_options(p: argparse.ArgumentParser, lr: float) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    g.add_argument("--lr", type=float, default=lr, help=f"learning rate of the model weights (default {lr})")
    g.add_argument("--max-length", type=int, default=128, help="tokens per text after truncation (default 128)")
    g.add_argument("--train-subset", type=int, default=None, help="use a seeded random subset of N training texts")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--resume", action="store_true", help="continue from the training state saved in --out")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="text: 'rotten_tomatoes' (default), '20newsgroups' (built in, offline) or a .csv/.jsonl file "
                        "with 'text' and 'label' columns; vision: 'fashion_mnist' (default, offline) or an image "
                        "folder root/<class>/<images>")
    p.add_argument("--eval-data", default=None, help="evaluation file (text) or image folder (vision) when --data "
                                                    "is a file / folder")


def _add_task_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("text", "vision"), default=None,
                   help="text (BERT-family classifiers) or vision (ViT/DeiT/Dinov2): read from the checkpoint or the "
                        "model folder's config; needed only for a hub name of a vision model (default text)")


def _add_kernel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--linear-kernel", choices=("auto", "onednn", "torch"), default="auto",
                   help="inference linears on a CPU in float32: auto (oneDNN on packed weights for weights of "
                        "1 MiB or more, where this PyTorch has it; PyTorch's F.linear for the rest), onednn (pack "
                        "every weight) or torch (F.linear everywhere). The dense run inside trimformer uses the "
                        "same kernel (default auto)")


def _add_level_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--level", type=float, default=None,
                   help="vision SaiT: sparsity level to run at (keep rate or importance mass in (0, 1]; "
                        "default: the checkpoint's)")


def _add_run_options(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """What eval and bench share: the checkpoint, its task and level, the data and the text length."""
    p.add_argument("checkpoint", help=checkpoint_help)
    _add_task_option(p)
    _add_level_option(p)
    _add_data_options(p)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimformer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trimformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("finetune", help="fine-tune a BERT/RoBERTa classifier (the dense starting point)")
    p.add_argument("--model", default="minilm",
                   help="'minilm' (offline all-MiniLM-L6-v2), a local folder or a hub name (default minilm)")
    _add_data_options(p)
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training data (default 1)")
    p.add_argument("--out", required=True, help="output folder (a trimformer checkpoint of the dense model)")
    _add_train_options(p, lr=1e-4)

    p = sub.add_parser("prune", help="learn token pruning (text: LTP, top-k; vision: SaiT, AS-ViT, EViT, ToMe)")
    p.add_argument("--model", required=True, help="fine-tuned classifier: local folder or hub name")
    _add_task_option(p)
    _add_data_options(p)
    p.add_argument("--method", choices=("ltp", "topk", "sait", "asvit", "evit", "tome"), default=None,
                   help="pruning method: text ltp (default) | topk; vision sait (default) | asvit | evit | tome")
    p.add_argument("--target-flops", type=float, default=0.5,
                   help="wanted fraction of dense FLOPs; thresholds are calibrated to it (default 0.5). "
                        "Pass 0 to use LTP's lambda regulariser with --final-threshold instead")
    p.add_argument("--soft-steps", type=int, default=200, help="LTP soft-stage steps (default 200)")
    p.add_argument("--hard-steps", type=int, default=200, help="hard-mask fine-tuning steps (default 200)")
    p.add_argument("--temperature", type=float, default=1e-3, help="LTP soft-mask temperature (default 1e-3)")
    p.add_argument("--lambda", dest="lambda_", type=float, default=0.1,
                   help="LTP mask regulariser weight, used with --target-flops 0 (default 0.1)")
    p.add_argument("--final-threshold", type=float, default=0.01,
                   help="LTP base threshold of the last layer (default 0.01)")
    p.add_argument("--threshold-lr", type=float, default=2e-5, help="LTP threshold learning rate (default 2e-5)")
    v = p.add_argument_group("vision methods")
    v.add_argument("--sait-policy", choices=("topk", "mass"), default="topk",
                   help="SaiT: fixed keep rate (topk) or input-adaptive importance mass (default topk)")
    v.add_argument("--level", type=float, default=0.7, help="SaiT: default sparsity level saved (default 0.7)")
    v.add_argument("--steps", type=int, default=200, help="SaiT / AS-ViT training steps (default 200)")
    v.add_argument("--keep-rate", type=float, default=0.7, help="EViT keep rate per pruning layer (default 0.7)")
    v.add_argument("--r", type=int, default=8, help="ToMe: tokens merged per layer (default 8)")
    p.add_argument("--out", required=True, help="output folder of the pruned checkpoint")
    _add_train_options(p, lr=2e-5)

    p = sub.add_parser("eval", help="accuracy, FLOPs and kept tokens of a checkpoint")
    _add_run_options(p, "pruned checkpoint folder, or a dense transformers model")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--mode", choices=("packed", "masked"), default="packed",
                   help="packed: tokens removed (default); masked: official LTP behaviour")
    p.add_argument("--limit", type=int, default=None, help="evaluate on a seeded subset of N texts")
    _add_kernel_option(p)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")

    p = sub.add_parser("bench", help="measured throughput and latency: dense vs pruned, same run")
    _add_run_options(p, "pruned checkpoint folder")
    p.add_argument("--batch-size", type=int, default=32, help="batch size to time (default 32)")
    p.add_argument("--num-samples", type=int, default=256, help="texts timed per repetition (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repetitions (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    _add_kernel_option(p)
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy evaluation")
    p.add_argument("--accuracy-limit", type=int, default=None,
                   help="compute the accuracies on a seeded subset of N test texts (default: all)")
    p.add_argument("--no-regroup", action="store_true",
                   help="run each packed batch in one piece, padded to its longest row, instead of regrouping "
                        "rows by kept-token count (same outputs; for comparison)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")

    p = sub.add_parser("quantize", help="post-training quantization (PWLQ or uniform) of a text or vision checkpoint")
    p.add_argument("checkpoint", help="fine-tuned classifier or pruned checkpoint folder (pruned stays pruned)")
    _add_task_option(p)
    _add_data_options(p)
    p.add_argument("--out", required=True, help="output folder of the quantized checkpoint")
    p.add_argument("--scheme", choices=("pwlq", "uniform", "adaround", "brecq", "rapq", "pwlq_adaround"),
                   default="pwlq", help="weight scheme (default pwlq); adaround, brecq, rapq and pwlq_adaround "
                   "learn the rounding on the calibration images (see docs/quantization.md)")
    p.add_argument("--iters", type=int, default=None,
                   help="reconstruction schemes: optimisation steps per layer / block (default 1000)")
    p.add_argument("--calib-images", type=int, default=None,
                   help="reconstruction schemes: calibration samples used for reconstruction (default 256)")
    p.add_argument("--wbits", type=int, default=4,
                   help="weight bits (default 4); PWLQ stores one region bit more, see --region-bit")
    p.add_argument("--abits", type=int, default=8, help="input-activation bits; 0 = weights only (default 8)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="data-free per-channel bias correction of the weights (default: on for pwlq and uniform, "
                        "off for the reconstruction schemes)")
    p.add_argument("--breakpoint", choices=("gaussian", "laplace", "search"), default=None,
                   help="PWLQ breakpoint: closed form for Gaussian/Laplacian weights, or MSE search (default "
                        "gaussian)")
    p.add_argument("--num-breakpoints", type=int, default=None, choices=(1, 2, 3),
                   help="PWLQ breakpoints per channel; more than 1 needs --breakpoint search (default 1)")
    p.add_argument("--region-bit", choices=("extra", "inside"), default="extra",
                   help="PWLQ: 'extra' stores the region bit on top of --wbits (paper), 'inside' counts it "
                        "within --wbits (default extra)")
    p.add_argument("--per-tensor", action="store_true", help="one weight range per tensor instead of per channel")
    p.add_argument("--weight-clip", choices=("minmax", "mse"), default=None,
                   help="uniform weights: clip at max|w| or at the MSE-optimal value (default minmax)")
    p.add_argument("--act-clip", choices=("topk_median", "percentile", "mse", "minmax"), default="topk_median",
                   help="activation range rule (default topk_median: median of the top-10 per batch, averaged)")
    p.add_argument("--act-scheme", choices=("uniform", "pwlq"), default="uniform",
                   help="activations: asymmetric uniform, or PWLQ with a searched breakpoint (default uniform)")
    p.add_argument("--pow2-scale", action="store_true", help="round every scale up to a power of two")
    p.add_argument("--exclude", nargs="*", default=[], help="module-name globs left in float (e.g. 'classifier')")
    p.add_argument("--layer-wbits", nargs="*", default=[], metavar="GLOB=BITS",
                   help="per-layer weight bits, first match wins (e.g. 'classifier=8')")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    p.add_argument("--calib-batches", type=int, default=16,
                   help="calibration batches of 32 training texts / images (default 16)")
    p.add_argument("--limit", type=int, default=None, help="evaluate on a seeded subset of N test texts / images")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")

    p = sub.add_parser("demo", help="offline end-to-end demo: fine-tune, prune, evaluate, benchmark, report")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--target-flops", type=float, default=0.5, help="FLOPs target (default 0.5)")
    p.add_argument("--fast", action="store_true", help="tiny settings for a smoke test (numbers are meaningless)")
    p.add_argument("--task", choices=("text", "vision"), default="text",
                   help="text: LTP on MiniLM / Rotten Tomatoes (default); vision: the sparsity dial of one SaiT "
                        "checkpoint on a small ViT / Fashion-MNIST")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trimformer.checkpoint import check_output_path
    from trimformer.cli import commands

    try:
        if args.command in ("finetune", "prune", "quantize"):
            check_output_path(args.out)  # refused up front, not after minutes of training
        return getattr(commands, f"run_{args.command}")(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"trimformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
