"""Train the benchmark CNNs of reconstruction PTQ (and structured pruning) on Fashion-MNIST, from scratch.

Models: ``resnet`` (ResNet-18-style) and ``mobilenetv2`` (MobileNetV2-style) from
:mod:`trimformer.vision.cnn_zoo`, and ``fmnist_cnn`` (the MobileNet-style :class:`trimformer.vision.cnn.MobileNetCNN`
of train_fmnist_cnn.py, default config). Seeded; AdamW, linear warm-up then cosine; random horizontal flips; the
first ``--train-images`` training images (default all 60k). Saves ``runs/cnn_zoo/<model>.pt`` (state dict + the
constructor arguments, git-ignored) and merges a record per model into benchmarks/results/cnn_zoo_train.json
(test accuracy on the full 10k test set, seconds, load average: the machine may be shared).

    python benchmarks/train_cnn_zoo.py --model resnet [--epochs 2] [--train-images 60000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trimformer.data.images import load_fashion_mnist
from trimformer.envinfo import run_record
from trimformer.io_utils import atomic_write_json
from trimformer.vision.cnn import CNNConfig, MobileNetCNN, count_parameters, prepare_images
from trimformer.vision.cnn_zoo import CNN_ZOO, build_cnn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cnn_zoo_train.json"
MODELS = (*CNN_ZOO, "fmnist_cnn")


def make_model(name: str) -> nn.Module:
    """A freshly initialised benchmark model by name (default widths)."""
    return MobileNetCNN(CNNConfig()) if name == "fmnist_cnn" else build_cnn(name)


def load_trained(name: str, runs: Path = ROOT / "runs" / "cnn_zoo") -> nn.Module:
    """The model saved by this script (eval mode); FileNotFoundError naming the command that makes it."""
    path = runs / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run python benchmarks/train_cnn_zoo.py --model {name}")
    model = make_model(name)
    model.load_state_dict(torch.load(path, map_location="cpu")["state_dict"])
    return model.eval()


def fmnist_tensors(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 1, 28, 28) and int64 labels of a Fashion-MNIST split (first ``limit``)."""
    images, labels = load_fashion_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return prepare_images(images, CNNConfig()), labels.long()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``x``."""
    model.eval()
    correct = sum(int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> float:
    """AdamW + warm-up/cosine for ``args.epochs`` epochs; returns seconds."""
    steps = len(x) // args.batch_size * args.epochs
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    warmup = max(1, int(0.15 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            xb = x[idx]  # (B, 1, 28, 28)
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 100 == 0:
                print(f"epoch {epoch + 1} step {i}: loss {loss.item():.3f}", flush=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=None, help="first N training images (default all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "cnn_zoo"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = fmnist_tensors("train", args.train_images)
    x_test, y_test = fmnist_tensors("test")
    model = make_model(args.model).to(memory_format=torch.channels_last)  # several times faster convs on CPU
    seconds = train(model, x, y, args)
    model = model.to(memory_format=torch.contiguous_format)
    acc = accuracy(model, x_test, y_test)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    torch.save({"model": args.model, "state_dict": model.state_dict()}, Path(args.runs) / f"{args.model}.pt")
    record = {"model": args.model, "parameters": count_parameters(model), "test_accuracy": acc,
              "test_images": len(x_test), "train_images": len(x), "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
              "train_seconds": seconds, "loadavg_1_5_15": list(os.getloadavg()), "threads": args.threads,
              **run_record(ROOT, argv)}
    results = {}
    if RESULTS.is_file():
        results = json.loads(RESULTS.read_text())
    results[args.model] = record
    atomic_write_json(RESULTS, results)
    print(f"{args.model}: {record['parameters']:,} parameters, test accuracy {acc:.4f} ({seconds:.0f} s)")
    return record


if __name__ == "__main__":
    main()
