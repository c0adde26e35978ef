"""ToMe's accuracy and measured throughput against r on the fine-tuned DINOv2 classifier (training-free).

Throughput of every r is timed in the same run as the unmodified transformers model, interleaved; accuracy
and FLOPs come from benchmarks/results/vision_pruning.json (same model, same 1,000 test images).
Writes benchmarks/results/tome_curve.json and tome_curve.png. Run it on an otherwise idle machine.

    python benchmarks/tome_curve.py [--threads 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch

from trimformer.bench import time_variants
from trimformer.data.images import load_image_data, pixel_batches
from trimformer.envinfo import machine_info
from trimformer.io_utils import atomic_write_json
from trimformer.loading import load_vision_model, model_resolution
from trimformer.methods import ToMeConfig
from trimformer.pruning import prune
from trimformer.report.plots import plt, save_figure

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", default=str(ROOT / "runs/fmnist_vit"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    rows = [r for r in json.loads((out / "vision_pruning.json").read_text())["rows"] if r["method"] == "tome"]
    plain, meta = load_vision_model(args.base)
    images = load_image_data("fashion_mnist", "test", model_resolution(plain, meta), limit=args.images, seed=3)
    batches = [{"pixel_values": p} for p, _ in pixel_batches(images, args.batch_size)]
    variants = {"dense_hf": lambda b: plain.model(**b).logits}
    for r in rows:
        model = prune(plain.model, ToMeConfig(r=r["r"]))
        variants[f"r={r['r']}"] = lambda b, m=model: m(**b).logits
    speed = time_variants(variants, batches, args.repeats)
    base = speed["dense_hf"]["samples_per_s"]
    curve = [{"r": r["r"], "accuracy": r["accuracy"], "flops_ratio": r["flops_ratio"],
              "samples_per_s": speed[f"r={r['r']}"]["samples_per_s"],
              "speedup": speed[f"r={r['r']}"]["samples_per_s"] / base} for r in rows]
    for c in curve:
        print(f"r={c['r']}: {c['accuracy']:.2f}%  FLOPs {c['flops_ratio']:.3f}  x{c['speedup']:.2f}", flush=True)
    atomic_write_json(out / "tome_curve.json", {
        "benchmark": "tome_curve", "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "threads": args.threads},
        "settings": {"base_model": args.base, "batch_size": args.batch_size, "images": len(images),
                     "repeats": args.repeats, "accuracy_from": "vision_pruning.json"},
        "dense_samples_per_s": base, "curve": curve})
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["r"] for c in curve], [c["accuracy"] for c in curve], "o-", color="tab:purple")
    ax.set_xlabel("r (tokens merged per layer)")
    ax.set_ylabel("accuracy (%)", color="tab:purple")
    ax2 = ax.twinx()
    ax2.plot([c["r"] for c in curve], [c["speedup"] for c in curve], "s--", color="tab:orange")
    ax2.set_ylabel(f"measured speed-up vs dense (batch {args.batch_size})", color="tab:orange")
    ax.set_title("ToMe on the fine-tuned DINOv2 ViT-S (training-free)", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, out / "tome_curve.png")


if __name__ == "__main__":
    main()
