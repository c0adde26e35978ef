"""Train a tiny ViT from scratch on Fashion-MNIST (28 px, 4 px patches = 49 tokens + [CLS]).

transformers' ViTForImageClassification built from a config (hidden 128, 6 layers, 4 heads, MLP 512),
random init, AdamW with warmup and cosine decay, light augmentation (horizontal flip), full training set.
Saves an image-classifier checkpoint to runs/tiny_vit (loadable by ``trimformer ... --task vision``) and
writes benchmarks/results/tiny_vit_train.json.

    python benchmarks/train_tiny_vit_fmnist.py [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTForImageClassification, get_cosine_schedule_with_warmup

from trimformer.envinfo import machine_info
from trimformer.io_utils import atomic_write_json
from trimformer.vision.checkpoint import save_image_classifier
from trimformer.vision.data import FASHION_MNIST_CLASSES, load_fashion_mnist, to_model_input

ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 28


def as_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float [N, 3, 28, 28] (the FashionMNIST dataset's transform)."""
    return torch.stack([to_model_input(img.float().div(255)[None], RESOLUTION) for img in images])


@torch.no_grad()
def accuracy(model: ViTForImageClassification, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    preds = torch.cat([model(pixel_values=x[i:i + 500]).logits.argmax(-1) for i in range(0, len(x), 500)])
    return 100.0 * float((preds == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs/tiny_vit"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results/tiny_vit_train.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ViTConfig(image_size=RESOLUTION, patch_size=4, num_channels=3, hidden_size=128, num_hidden_layers=6,
                       num_attention_heads=4, intermediate_size=512, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, num_labels=10,
                       id2label=dict(enumerate(FASHION_MNIST_CLASSES)),
                       label2id={n: i for i, n in enumerate(FASHION_MNIST_CLASSES)})
    model = ViTForImageClassification(config)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    x_train, x_test = as_inputs(x_train), as_inputs(x_test)
    y_train, y_test = y_train.long(), y_test.long()
    steps_per_epoch = len(x_train) // args.batch_size
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, int(0.1 * total), total)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=10)
        for step in bar:
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            xb = x_train[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(pixel_values=xb).logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.detach().item():.3f}", refresh=False)
        acc = accuracy(model, x_test, y_test)
        history.append({"epoch": epoch + 1, "test_accuracy": acc, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"epoch {epoch + 1}: test accuracy {acc:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    recipe = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": 0.05,
              "schedule": "10% linear warmup, cosine", "augmentation": "horizontal flip p=0.5", "seed": args.seed,
              "train_images": len(x_train)}
    save_image_classifier(model, args.out, {"resolution": RESOLUTION, "label_names": list(FASHION_MNIST_CLASSES),
                                            "recipe": recipe})
    atomic_write_json(args.results, {"model": "ViTForImageClassification from scratch", "config": config.to_dict(),
                                     "parameters": sum(p.numel() for p in model.parameters()), "recipe": recipe,
                                     "history": history, "test_accuracy": history[-1]["test_accuracy"],
                                     "test_images": len(x_test), "wall_seconds": round(time.perf_counter() - t0, 1),
                                     "machine": {**machine_info(), "threads": args.threads}, "checkpoint": args.out})


if __name__ == "__main__":
    main()
