"""Structured (channel) pruning of the Fashion-MNIST ResNet- and MobileNetV2-style CNNs: AdaPruner at several FLOPs
budgets against three baselines at equal FLOPs, with measured latency, parameters and file sizes.

Per model (trained by ``benchmarks/train_cnn_zoo.py``; loaded from runs/cnn_zoo/):

- AdaPruner (:func:`trimformer.structured_prune` steps; one sparse training shared by every budget);
- Torch-Pruning magnitude pruning with a uniform width ratio, fine-tuned for AdaPruner's sparse + fine-tuning
  steps (equal training after the dense model);
- network slimming: a global threshold on the batch-norm scales of the same sparse-trained model, fine-tuned for
  AdaPruner's fine-tuning steps;
- AdaPruner's sub-network trained from scratch for ``--scratch-steps`` steps (default: as many images as the dense
  model saw, 2 epochs x 20k).

Accuracy on the full 10k test set; the criterion is chosen on ``--val-images`` training images that no step
trains on. Latency of the dense and AdaPruner models at batch 1 and 64, interleaved in the same run
(:func:`trimformer.bench.time_variants`). Writes benchmarks/results/structured_cnn.json (+ .png); each model's
entry is replaced when it is rerun, other models' entries are kept.

    python benchmarks/structured_cnn.py --model resnet [--targets 0.5,0.6,0.7] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from trimformer.bench import paired_speedup, time_variants, timing_spread
from trimformer.envinfo import run_record
from trimformer.io_utils import atomic_write_json
from trimformer.structured import AdaPrunerConfig, count_macs, save_structured
from trimformer.structured.adapruner import adaprune, sparse_train_
from trimformer.structured.baselines import from_scratch, magnitude_uniform, network_slimming
from trimformer.structured.train import accuracy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_cnn_zoo import fmnist_tensors, load_trained  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "structured_cnn.json"
METHODS = ("adapruner", "magnitude_uniform", "network_slimming", "from_scratch")


def file_bytes(model: torch.nn.Module) -> int:
    """Size of the model's saved weights (safetensors; a pruned model through save_structured)."""
    with tempfile.TemporaryDirectory() as tmp:
        if getattr(model, "trimformer_structure", None) is not None:
            return (save_structured(model, Path(tmp) / "m") / "model.safetensors").stat().st_size
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{tmp}/m.safetensors")
        return Path(f"{tmp}/m.safetensors").stat().st_size


def describe(model: torch.nn.Module, test: tuple, example: torch.Tensor, dense_macs: int) -> dict[str, Any]:
    macs, params = count_macs(model, example)
    return {"accuracy": accuracy(model, test), "macs": macs, "flops_fraction": macs / dense_macs,
            "parameters": params, "file_bytes": file_bytes(model)}


def timing(models: dict[str, torch.nn.Module], test_x: torch.Tensor, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = {name: (lambda b, m=m: m(b["pixel_values"])) for name, m in models.items()}
    for batch, count in ((1, 20), (64, 4)):
        batches = [{"pixel_values": test_x[i * batch:(i + 1) * batch]} for i in range(count)]
        speed = time_variants(variants, batches, repeats)
        out[f"batch{batch}"] = {name: {"latency_ms_median": s["latency_ms_median"],
                                       "samples_per_s": s["samples_per_s"],
                                       "speedup_vs_dense": paired_speedup(speed, name, "dense"),
                                       "timing_spread": timing_spread(speed, name, count)}
                                for name, s in speed.items()}
    return out


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    dense = load_trained(name)
    x, y = fmnist_tensors("train")
    train = (x[:args.train_images], y[:args.train_images])
    val = (x[-args.val_images:], y[-args.val_images:])  # never trained on (train uses the first train_images)
    test = fmnist_tensors("test")
    example = x[:1]
    dense_macs = count_macs(dense, example)[0]
    entry: dict[str, Any] = {"dense": describe(dense, test, example, dense_macs), "rows": []}
    print(f"{name}: dense {entry['dense']['accuracy']:.4f}, {dense_macs / 1e6:.2f} MMACs", flush=True)
    base = AdaPrunerConfig(l1_penalty=args.l1_penalty, sparse_steps=args.sparse_steps,
                           finetune_steps=args.finetune_steps, lr=args.lr, batch_size=args.batch_size,
                           selection_images=args.val_images, calibration_batches=args.calibration_batches)
    t0 = time.perf_counter()
    sparse = copy.deepcopy(dense)
    sparse_losses = sparse_train_(sparse, base, train)
    entry["sparse"] = {"seconds": time.perf_counter() - t0, "accuracy": accuracy(sparse, test),
                       "final_loss": sparse_losses[-1] if sparse_losses else None}
    common = {"lr": args.lr, "batch_size": args.batch_size, "calibration_batches": args.calibration_batches}
    pruned: dict[str, torch.nn.Module] = {}
    for target in args.targets:
        config = AdaPrunerConfig(**{**base.to_dict(), "target_flops": target})
        runs = {}
        t0 = time.perf_counter()
        ada = adaprune(sparse, config, train, val, sparse_trained=True)
        runs["adapruner"] = (ada, time.perf_counter() - t0)
        t0 = time.perf_counter()
        runs["magnitude_uniform"] = (magnitude_uniform(dense, target, train, args.sparse_steps + args.finetune_steps,
                                                       **common), time.perf_counter() - t0)
        t0 = time.perf_counter()
        runs["network_slimming"] = (network_slimming(sparse, target, train, args.finetune_steps, **common),
                                    time.perf_counter() - t0)
        t0 = time.perf_counter()
        runs["from_scratch"] = (from_scratch(ada.model, train, args.scratch_steps, lr=args.scratch_lr,
                                             batch_size=args.batch_size), time.perf_counter() - t0)
        for method, (result, seconds) in runs.items():
            report = {k: v for k, v in result.report.items() if not k.endswith("losses") and k != "config"}
            row = {"method": method, "target_flops": target, "seconds": seconds,
                   **describe(result.model, test, example, dense_macs), "report": report}
            entry["rows"].append(row)
            print(f"{name} {target:.0%} {method}: {row['accuracy']:.4f} at {row['flops_fraction']:.3f} FLOPs "
                  f"({seconds:.0f} s)", flush=True)
        pruned[f"adapruner_{target:g}"] = ada.model
    entry["timing"] = timing({"dense": dense, **pruned}, test[0], args.timing_repeats)
    return entry


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        entry = results["models"][name]
        for method, marker in zip(METHODS, "osD^", strict=True):
            rows = sorted((r for r in entry["rows"] if r["method"] == method), key=lambda r: r["flops_fraction"])
            ax.plot([100 * r["flops_fraction"] for r in rows], [100 * r["accuracy"] for r in rows], marker=marker,
                    label=method)
        ax.axhline(100 * entry["dense"]["accuracy"], color="k", ls="--", lw=1, label="dense")
        ax.set_xlabel("FLOPs (% of dense)")
        ax.set_ylabel("test accuracy (%, 10k images)")
        ax.set_title(f"{name} on Fashion-MNIST")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("resnet", "mobilenetv2"), required=True)
    p.add_argument("--targets", default="0.5,0.6,0.7", help="FLOPs fractions, comma-separated")
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--val-images", type=int, default=1000, help="criterion choice: the last N training images")
    p.add_argument("--sparse-steps", type=int, default=200)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--scratch-steps", type=int, default=625, help="default: 40k images, the dense model's 2 epochs")
    p.add_argument("--l1-penalty", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scratch-lr", type=float, default=4e-3, help="the dense training's learning rate")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--timing-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src", "benchmarks/structured_cnn.py"],
                           capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    entry = run_model(args.model, args)
    entry.update({"options": {k: v for k, v in vars(args).items() if k != "results"},
                  "seconds": time.perf_counter() - t0, **run_record(ROOT, argv)})
    entry["commit"] = commit + ("+uncommitted changes" if dirty else "")  # at the start of the run
    entry["torch_pruning"] = __import__("torch_pruning").__version__
    out = Path(args.results)
    results = json.loads(out.read_text()) if out.is_file() else {"models": {}}
    results["models"][args.model] = entry  # re-read just before writing: another model's run may have written
    atomic_write_json(out, results)
    plot(results, out.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
