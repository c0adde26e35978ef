"""Train a small ViT from scratch on Fashion-MNIST (28 px, 4 px patches: 49 patch tokens + [CLS]).

The plain model that benchmarks/vision_pruning.py and vision_speed.py then prune (``--base runs/tiny_vit``,
``--tag tiny``): the from-scratch counterpart of the DINOv2 fine-tune. Recipe: AdamW (lr 1e-3, weight decay
0.05), batch 128, warm-up then cosine decay, no augmentation, the whole 60k training split; accuracy on all
10,000 test images. The checkpoint is reloaded and must predict the same before the results are written.

With ``--device cuda`` the training runs on a GPU (TF32 allowed there); the test accuracy is always measured
on the CPU after training, the device every other benchmark number comes from.

Writes runs/tiny_vit/ and benchmarks/results/tiny_vit_train.json.
Usage: python benchmarks/train_tiny_vit.py [--hidden 128 --layers 6 --heads 4 --patch-size 4 --epochs 4]
       python benchmarks/train_tiny_vit.py --hidden 192 --layers 12 --heads 3 --patch-size 2 --epochs 30 \
           --device cuda --out runs/vit_ti --results benchmarks/results/vit_ti_train.json   (ViT-Ti shape)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from trimformer.checkpoint import load, save
from trimformer.data.images import FASHION_MNIST_CLASSES, grayscale_batch_to_inputs, load_fashion_mnist, pixel_batches
from trimformer.envinfo import device_label, run_record
from trimformer.io_utils import atomic_write_json
from trimformer.report.vision_demo import RESOLUTION, tiny_vit, train_from_scratch

ROOT = Path(__file__).resolve().parent.parent


@torch.inference_mode()
def predictions(model: torch.nn.Module, data: TensorDataset) -> torch.Tensor:
    """Predicted class of every image, batch 500. -> long [N]."""
    model.eval()
    return torch.cat([model(pixel_values=p).logits.argmax(-1) for p, _ in pixel_batches(data, 500)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=4, help="4: 49 patch tokens; 2: 196 (ViT-Ti/16 at 224 px)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="where training runs (cpu, cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs/tiny_vit"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks/results/tiny_vit_train.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    train = TensorDataset(grayscale_batch_to_inputs(train_x, RESOLUTION), train_y.long())
    test = TensorDataset(grayscale_batch_to_inputs(test_x, RESOLUTION), test_y.long())

    model = tiny_vit(args.hidden, args.layers, args.heads, args.patch_size)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # training only; the accuracy below is measured on CPU
    start = time.perf_counter()
    train_from_scratch(model, train, args.epochs, args.seed, device=args.device)
    train_seconds = time.perf_counter() - start
    model.cpu()
    predicted = predictions(model, test)
    accuracy = 100.0 * float((predicted == test_y).float().mean())
    print(f"test accuracy {accuracy:.2f}% on {len(test)} images after {train_seconds:.0f} s of training", flush=True)

    recipe = {"optimizer": "AdamW", "lr": 1e-3, "weight_decay": 0.05, "batch_size": 128, "epochs": args.epochs,
              "schedule": "linear warm-up (10%) then cosine", "augmentation": None, "train_images": len(train),
              "seed": args.seed, "hidden_size": args.hidden, "layers": args.layers, "heads": args.heads,
              "patch_size": args.patch_size, "device": device_label(args.device)}
    out = save(model, args.out, resolution=RESOLUTION, label_names=list(FASHION_MNIST_CLASSES),
               extra={"recipe": recipe, "metrics": {"test_accuracy": accuracy, "test_images": len(test)}},
               overwrite=True)  # a rerun replaces its own checkpoint
    reloaded, _ = load(out)
    if not torch.equal(predictions(reloaded, test), predicted):
        raise RuntimeError("the reloaded checkpoint predicts differently from the trained model")
    parameters = sum(p.numel() for p in model.parameters())
    atomic_write_json(args.results, {
        "model": f"ViTForImageClassification from scratch (hidden {args.hidden}, {args.layers} blocks, "
                 f"{args.heads} heads, 28 px, {args.patch_size} px patches)",
        "parameters": parameters, "test_accuracy": accuracy, "test_images": len(test), "recipe": recipe,
        "train_seconds": round(train_seconds, 1), "checkpoint": str(Path(out).resolve().relative_to(ROOT))
        if Path(out).resolve().is_relative_to(ROOT) else str(out),
        **run_record(ROOT, sys.argv[1:])})
    print(f"saved {out}; results {args.results}", flush=True)


if __name__ == "__main__":
    main()
