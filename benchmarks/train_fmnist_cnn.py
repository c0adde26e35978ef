"""Train the small MobileNet-style CNN on the full Fashion-MNIST training set (60k images, 28 px).

Seeded; AdamW with a one-cycle (warmup + cosine) schedule; random horizontal flips. Evaluates on the
full 10k test set, saves the model with :func:`trimformer.save` (``trimformer.json`` + ``model.safetensors``)
(default ``runs/fmnist_cnn/``) and writes ``benchmarks/results/fmnist_cnn_train.json``. The test set is
evaluated after each epoch for monitoring only (no model selection: the last epoch is saved).
Needs the Debian package dataset-fashion-mnist.

    python benchmarks/train_fmnist_cnn.py [--epochs 3] [--out runs/fmnist_cnn] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from trimformer.checkpoint import load, save
from trimformer.data.images import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist
from trimformer.envinfo import run_record
from trimformer.io_utils import atomic_write_json
from trimformer.vision.cnn import CNNConfig, MobileNetCNN, count_parameters, prepare_images

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "fmnist_cnn_train.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "fmnist_cnn"), help="checkpoint folder")
    p.add_argument("--results", default=str(RESULTS), help="results JSON")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=0.15, help="fraction of steps spent warming up")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N train/test images (smoke)")
    p.add_argument("--data-root", default=None, help=f"folder of the idx .gz files (default {FASHION_MNIST_DIR})")
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(model: MobileNetCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` (eval mode) on normalised images ``x``."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].contiguous(memory_format=torch.channels_last)
        logits = model(xb)
        yb = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(-1) == yb).sum())
    return {"accuracy": correct / len(x), "loss": loss_sum / len(x), "n": len(x)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    config = CNNConfig()
    train_images, train_labels = load_fashion_mnist("train", args.data_root)
    test_images, test_labels = load_fashion_mnist("test", args.data_root)
    if args.limit is not None:
        train_images, train_labels = train_images[: args.limit], train_labels[: args.limit]
        test_images, test_labels = test_images[: args.limit], test_labels[: args.limit]
    x_train, y_train = prepare_images(train_images, config), train_labels.long()
    x_test, y_test = prepare_images(test_images, config), test_labels.long()

    model = MobileNetCNN(config).to(memory_format=torch.channels_last)  # 3-4x faster convs on CPU
    n_params = count_parameters(model)
    steps_per_epoch = len(x_train) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    if total_steps < 1:
        raise SystemExit(f"{len(x_train)} images are fewer than one batch of {args.batch_size}")
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    warmup = max(1, int(args.warmup * total_steps))

    def lr_factor(step: int) -> float:  # linear warmup, cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    print(f"CNN: {n_params:,} parameters; {len(x_train)} train / {len(x_test)} test images; "
          f"{args.epochs} epochs x {steps_per_epoch} steps of {args.batch_size}; {args.threads} threads", flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, float]] = []
    tty = sys.stderr.isatty()
    t_train = time.perf_counter()
    train_seconds = 0.0
    for epoch in range(args.epochs):
        model.train()
        t_epoch = time.perf_counter()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=1 if tty else 15,
                   dynamic_ncols=True)
        for i in bar:
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            xb, yb = x_train[idx], y_train[idx]  # (B, 1, 28, 28), (B,)
            if not args.no_flip:
                flip = torch.rand(len(xb), generator=generator) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            logits = model(xb.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(-1) == yb).sum())
            seen += len(yb)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=tty)
        bar.close()
        epoch_seconds = time.perf_counter() - t_epoch
        train_seconds += epoch_seconds
        monitor = evaluate(model, x_test, y_test)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "test_accuracy_monitor": monitor["accuracy"], "seconds": epoch_seconds})
        print(f"epoch {epoch + 1}: train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}, "
              f"test acc {monitor['accuracy']:.4f} ({epoch_seconds:.0f} s)", flush=True)

    t_eval = time.perf_counter()
    test = evaluate(model, x_test, y_test)
    eval_seconds = time.perf_counter() - t_eval
    loop_seconds = time.perf_counter() - t_train

    recipe = {
        "data": "Fashion-MNIST (Debian dataset-fashion-mnist), full train split" if args.limit is None
        else f"Fashion-MNIST, first {args.limit} train images",
        "train_images": len(x_train),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": "AdamW",
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "weight_decay_on_norm_and_bias": False,
        "schedule": "linear warmup then cosine to 0, per step",
        "warmup_fraction": args.warmup,
        "label_smoothing": args.label_smoothing,
        "augmentation": "none" if args.no_flip else "random horizontal flip (p=0.5)",
        "seed": args.seed,
        "threads": args.threads,
    }
    preprocessing = {"channels": 1, "resolution": 28, "formula": "(x / 255 - input_mean) / input_std",
                     "input_mean": config.input_mean, "input_std": config.input_std}
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_images": test["n"]}
    out = save(
        model.to(memory_format=torch.contiguous_format),
        args.out,
        resolution=28,
        label_names=list(FASHION_MNIST_CLASSES),
        extra={"recipe": recipe, "preprocessing": preprocessing, "metrics": metrics},
        overwrite=True,  # a rerun replaces its own checkpoint
    )
    reloaded, _ = load(out)  # the saved checkpoint reproduces the accuracy
    reloaded_accuracy = evaluate(reloaded, x_test, y_test)["accuracy"]
    if reloaded_accuracy != test["accuracy"]:
        raise RuntimeError(f"reloaded checkpoint accuracy {reloaded_accuracy} != {test['accuracy']}")

    total_seconds = time.perf_counter() - t_start
    result = {
        "model": "MobileNetCNN (trimformer.vision.cnn)",
        "parameters": n_params,
        "config": config.to_dict(),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_images": test["n"],
        "epochs": args.epochs,
        "history": history,
        "recipe": recipe,
        "preprocessing": preprocessing,
        "train_seconds": train_seconds,
        "train_plus_monitor_seconds": loop_seconds - eval_seconds,
        "final_eval_seconds": eval_seconds,
        "total_wall_seconds": total_seconds,
        "checkpoint": os.path.relpath(out, ROOT),
        **run_record(ROOT, argv),
    }
    atomic_write_json(args.results, result)
    print(f"test accuracy {test['accuracy']:.4f} on {test['n']} images; train {train_seconds:.0f} s, "
          f"total {total_seconds:.0f} s; saved {out}, results {args.results}", flush=True)
    return result


if __name__ == "__main__":
    main()
