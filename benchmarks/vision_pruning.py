"""Vision token reduction on DINOv2 ViT-S/14 fine-tuned on Fashion-MNIST: SaiT, AS-ViT, EViT, ToMe vs dense.

Stages (each cached, so a rerun resumes):
1. train: SaiT (one checkpoint, dense/sparse passes with shared weights, distillation) and AS-ViT (thresholds
   + FLOPs budget) from the plain fine-tuned model (runs/fmnist_vit, benchmarks/finetune_vit_fmnist.py);
2. accuracy vs GFLOPs on a seeded test subset: the plain model, SaiT at several levels (top-K and the
   input-adaptive mass policy, same weights), AS-ViT, EViT keep rates and ToMe r values (training-free);
3. per-image kept-token counts of the mass policy (histogram) and a picture of the kept patches.
Speed is measured separately by benchmarks/vision_speed.py.

Writes benchmarks/results/vision_pruning[_TAG].json and vision_pruning[_TAG]_*.png.
Usage: python benchmarks/vision_pruning.py [--threads 2] [--sait-steps 120] [--asvit-steps 100]
       python benchmarks/vision_pruning.py --base OTHER_CLASSIFIER --runs runs/vision_other --tag other
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import torch

import trimformer
from trimformer.checkpoint import is_pruned_checkpoint, load_pruned, save_pruned
from trimformer.data.images import FASHION_MNIST_ENV, load_image_data, pixel_batches
from trimformer.envinfo import device_label, machine_info
from trimformer.evaluation import evaluate
from trimformer.io_utils import atomic_write_json
from trimformer.loading import load_vision_model, model_resolution
from trimformer.methods import ASViTConfig, EViTConfig, SaiTConfig, ToMeConfig
from trimformer.pruning import prune
from trimformer.report.plots import kept_histogram, kept_patch_masks, kept_patches
from trimformer.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SAIT_TOPK_LEVELS = (0.7, 0.5, 0.4, 0.3)
SAIT_MASS_LEVELS = (0.95, 0.9, 0.85, 0.8)
EVIT_RATES = (0.9, 0.7, 0.5)
TOME_R = (2, 3, 4, 5, 6)


def train_method(name: str, base: Path, out: Path, config: Any, data, train: TrainConfig,
                 ) -> tuple[Any, float, dict]:
    """Train (or reload) SaiT / AS-ViT; returns (model, training seconds or 0 when reloaded, checkpoint meta)."""
    if is_pruned_checkpoint(out):
        print(f"[{name}] reusing {out}", flush=True)
        model, meta = load_pruned(out)
        return model, 0.0, meta
    model, meta = load_vision_model(base)
    pruned = prune(model.model, config)
    t0 = time.perf_counter()
    history = trimformer.fit(pruned, data, train)
    secs = time.perf_counter() - t0
    pruned.cpu()
    summary = {k: v for k, v in history.items() if k != "train"}
    save_pruned(pruned, out, extra={"resolution": meta["resolution"], "label_names": meta["label_names"],
                                    "recipe": {"base_model": str(base), "train": train.to_dict(),
                                               "train_images": len(data), "train_data": train_data_source(),
                                               "device": device_name(), "train_seconds": round(secs, 1),
                                               **summary}}, overwrite=True)  # a rerun replaces its own
    model, meta = load_pruned(out)
    return model, secs, meta


def train_data_source() -> str:
    return os.environ.get(FASHION_MNIST_ENV) or "Debian dataset-fashion-mnist"


def device_name() -> str:
    """The device training runs on (Accelerate picks the GPU when there is one)."""
    return device_label("cuda" if torch.cuda.is_available() else "cpu")


def float_list(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def row(method: str, setting: str, ev, dense_acc: float, **extra: Any) -> dict[str, Any]:
    r = {"method": method, "setting": setting, **ev.summary(), "delta_vs_plain": ev.accuracy - dense_acc, **extra}
    print(f"  {method:6s} {setting:14s} acc {ev.accuracy:6.2f} ({ev.accuracy - dense_acc:+.2f})  "
          f"FLOPs {ev.flops_ratio:.3f}", flush=True)
    return r


def plot_curves(rows: list[dict], dense_acc: float, dense_gflops: float, path: Path, title: str) -> None:
    from trimformer.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.6))
    styles = {"sait-topk": ("C0", "o"), "sait-mass": ("C1", "s"), "asvit": ("C2", "^"), "evit": ("C3", "v"),
              "tome": ("C4", "D")}
    for method, (color, marker) in styles.items():
        pts = sorted((r["gflops_per_sample"], r["accuracy"]) for r in rows if r["method"] == method)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, color=color, label=method)
    ax.scatter([dense_gflops], [dense_acc], color="k", marker="*", s=120, zorder=5, label="plain fine-tuned")
    ax.set_xlabel("encoder GFLOPs per image")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", default=str(ROOT / "runs/fmnist_vit"))
    ap.add_argument("--runs", default=str(ROOT / "runs/vision"))
    ap.add_argument("--train-images", type=int, default=6000)
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--sait-steps", type=int, default=120)
    ap.add_argument("--asvit-steps", type=int, default=100)
    ap.add_argument("--asvit-rho", type=float, default=0.6)
    ap.add_argument("--train-batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--asvit-lr", type=float, default=None, help="AS-ViT's learning rate (default: --lr)")
    ap.add_argument("--sait-train-levels", type=float_list, default=SaiTConfig.train_levels,
                    help="comma-separated top-K levels sampled on sparse SaiT steps")
    ap.add_argument("--sait-token-distill-weight", type=float, default=SaiTConfig.token_distill_weight,
                    help="weight of SaiT's token-selection distillation loss")
    ap.add_argument("--sait-stages", type=int_list, default=None, help="comma-separated pruning blocks (0-indexed)")
    ap.add_argument("--sait-levels", type=float_list, default=SAIT_TOPK_LEVELS, help="top-K levels evaluated")
    ap.add_argument("--mass-levels", type=float_list, default=SAIT_MASS_LEVELS, help="mass levels evaluated")
    ap.add_argument("--evit-rates", type=float_list, default=EVIT_RATES)
    ap.add_argument("--tome-r", type=int_list, default=TOME_R)
    ap.add_argument("--only-train", action="store_true", help="train (or reuse) SaiT and AS-ViT, then stop")
    ap.add_argument("--eval-device", default="cpu",
                    help="where the accuracy runs (cpu; cuda in full fp32, TF32 off, for models too slow here)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. 'other')")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, runs = Path(args.out_dir), Path(args.runs)
    stem = "vision_pruning" + (f"_{args.tag}" if args.tag else "")
    out.mkdir(parents=True, exist_ok=True)
    plain, meta = load_vision_model(args.base)
    res = model_resolution(plain, meta)
    train_data = load_image_data("fashion_mnist", "train", res, limit=args.train_images, seed=1)
    test_batches = pixel_batches(load_image_data("fashion_mnist", "test", res, limit=args.test_images), 50)
    train_cfg = TrainConfig(batch_size=args.train_batch_size, lr=args.lr, seed=0, save_every=1000)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # training only; every reported number is measured on CPU

    t0 = time.perf_counter()
    sait_cfg = SaiTConfig(policy="topk", steps=args.sait_steps, train_levels=args.sait_train_levels,
                          stages=args.sait_stages, token_distill_weight=args.sait_token_distill_weight)
    base = Path(args.base)
    sait, sait_secs, sait_meta = train_method("sait", base, runs / "sait", sait_cfg, train_data, train_cfg)
    asvit_cfg = ASViTConfig(target_flops=args.asvit_rho, steps=args.asvit_steps)
    asvit_train = dataclasses.replace(train_cfg, lr=args.asvit_lr if args.asvit_lr is not None else args.lr)
    asvit, asvit_secs, asvit_meta = train_method("asvit", base, runs / "asvit", asvit_cfg, train_data, asvit_train)
    if args.only_train:
        return
    if args.eval_device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        for model in (plain, sait, asvit):
            model.to(args.eval_device)
    plain_eval = evaluate(plain, test_batches)
    dense_acc = plain_eval.accuracy
    print(f"plain fine-tuned: {dense_acc:.2f}% at {plain_eval.gflops_per_sample:.3f} GFLOPs", flush=True)

    rows = [row("plain", "fine-tuned", plain_eval, dense_acc)]
    with sait.policy.at_level(None):
        sait_dense = evaluate(sait, test_batches)
    rows.append(row("sait", "dense (level None)", sait_dense, dense_acc))
    for level in args.sait_levels:
        with sait.policy.at_level(level):
            rows.append(row("sait-topk", f"keep {level}", evaluate(sait, test_batches), dense_acc,
                            level=level))
    mass_counts: dict[str, list[float]] = {}
    mass = prune(sait.model, SaiTConfig(policy="mass", steps=args.sait_steps,
                                                              stages=sait.policy.config().stages))
    for level in args.mass_levels:
        with mass.policy.at_level(level):
            ev = evaluate(mass, test_batches)
        stage = mass.policy.stages[0]
        per_image = [kept[stage] - 1 for kept in ev.kept_per_example]  # patch tokens (minus [CLS])
        mass_counts[f"mass {level}"] = per_image
        rows.append(row("sait-mass", f"mass {level}", ev, dense_acc, level=level,
                        kept_at_stage_min=min(per_image), kept_at_stage_max=max(per_image)))
    rho = asvit.policy.config().target_flops  # the checkpoint's own budget (it may have been trained elsewhere)
    rows.append(row("asvit", f"rho {rho}", evaluate(asvit, test_batches), dense_acc))
    for rate in args.evit_rates:
        m = prune(plain.model, EViTConfig(keep_rate=rate))
        rows.append(row("evit", f"keep {rate}", evaluate(m, test_batches), dense_acc, keep_rate=rate))
    for r in args.tome_r:
        m = prune(plain.model, ToMeConfig(r=r))
        rows.append(row("tome", f"r={r}", evaluate(m, test_batches), dense_acc, r=r))

    pixels = test_batches[0][0][:8]
    labels = [meta["label_names"][int(y)] for y in test_batches[0][1][:8]]
    keeps = kept_patch_masks(mass, pixels, args.mass_levels[1])
    kept_patches(pixels, keeps, labels, out / f"{stem}_kept_patches.png",
                 f"SaiT mass {args.mass_levels[1]}: patches pruned at block {mass.policy.stages[0]} in red")
    kept_histogram(mass_counts, keeps.shape[1], out / f"{stem}_kept_histogram.png",
                   "SaiT mass policy: kept tokens differ per image")
    plot_curves([r for r in rows if r["method"] not in ("plain", "sait")], dense_acc,
                plain_eval.gflops_per_sample, out / f"{stem}_accuracy_vs_gflops.png",
                f"{type(plain.model).__name__} / Fashion-MNIST {res} px: accuracy vs GFLOPs")
    result = {
        "benchmark": "vision_pruning",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "threads": args.threads},
        "eval_device": device_label(args.eval_device),
        "settings": {"base_model": args.base, "resolution": res, "train_images": args.train_images,
                     "test_images": args.test_images, "test_subset": "seeded (seed 0) from the 10k test set",
                     "train": train_cfg.to_dict(), "sait": sait.policy.config().to_dict(),
                     "asvit": asvit.policy.config().to_dict(),
                     "sait_train_seconds": round(sait_secs, 1), "asvit_train_seconds": round(asvit_secs, 1),
                     "sait_recipe": sait_meta.get("recipe"), "asvit_recipe": asvit_meta.get("recipe")},
        "accuracy_plain": dense_acc,
        "rows": rows,
        "kept_at_stage_per_image": mass_counts,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / f"{stem}.json", result)


if __name__ == "__main__":
    main()
