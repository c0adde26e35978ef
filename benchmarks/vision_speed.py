"""Measured speed of vision token reduction vs the unmodified transformers model, same run, interleaved.

Variants: the plain fine-tuned DINOv2 classifier (transformers' own forward, SDPA attention), our engine with
pruning off, SaiT (packed, tokens removed) at a chosen top-K level and with the input-adaptive mass policy on
the same weights (regrouped by kept count, the default, and as one batch padded to its longest row), and
ToMe / EViT at the setting whose FLOPs are closest to SaiT's (from benchmarks/results/vision_pruning.json).
Batch 64 (throughput) and batch 1 (latency). Speed-ups are against the faster of the two dense variants: our engine
runs its linears on prepacked oneDNN weights (trimformer.engine.linears), which speeds the dense model up too.
Run it on an otherwise idle machine.

Writes benchmarks/results/vision_speed[_TAG].json and .png.
Usage: python benchmarks/vision_speed.py [--sait-level 0.4] [--threads 2] [--base DIR --sait DIR --tag TAG]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch

from trimformer.bench import speedups, time_variants
from trimformer.checkpoint import load_pruned
from trimformer.data.images import load_image_data, pixel_batches
from trimformer.envinfo import device_label, machine_info
from trimformer.evaluation import evaluate
from trimformer.io_utils import atomic_write_json
from trimformer.loading import load_vision_model, model_resolution
from trimformer.methods import EViTConfig, SaiTConfig, ToMeConfig
from trimformer.pruning import prune

ROOT = Path(__file__).resolve().parent.parent


def closest(rows: list[dict], method: str, flops: float) -> dict:
    candidates = [r for r in rows if r["method"] == method]
    return min(candidates, key=lambda r: abs(r["flops_ratio"] - flops))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", default=str(ROOT / "runs/fmnist_vit"))
    ap.add_argument("--sait", default=str(ROOT / "runs/vision/sait"))
    ap.add_argument("--sait-level", type=float, default=0.5, help="top-K keep rate of the SaiT checkpoint")
    ap.add_argument("--mass-level", type=float, default=0.8, help="importance mass of the input-adaptive policy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--tag", default="", help="suffix of vision_pruning.py's results to pair with (e.g. other)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda; GPU results go to ..._cuda.json")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1],
                    help="batch sizes to time (default 64 1); a batch size above 1 times 4 batches of it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    suffix = f"_{args.tag}" if args.tag else ""
    accuracy = json.loads((out / f"vision_pruning{suffix}.json").read_text())
    device = torch.device(args.device)
    plain, meta = load_vision_model(args.base)
    sait, _ = load_pruned(args.sait)
    plain.to(device).eval()
    sait.to(device).eval()
    sait.policy.set_level(args.sait_level)
    res = model_resolution(plain, meta)
    images = load_image_data("fashion_mnist", "test", res, limit=max(256, 4 * max(args.batch_sizes)), seed=3)
    sait_eval = evaluate(sait, pixel_batches(images, 64), progress=False)
    mass = prune(sait.model, SaiTConfig(policy="mass", default_level=args.mass_level))
    tome_row = closest(accuracy["rows"], "tome", sait_eval.flops_ratio)
    evit_row = closest(accuracy["rows"], "evit", sait_eval.flops_ratio)
    tome = prune(plain.model, ToMeConfig(r=tome_row["r"]))
    evit = prune(plain.model, EViTConfig(keep_rate=evit_row["keep_rate"]))
    flops = {"sait": sait_eval.flops_ratio,
             "tome": evaluate(tome, pixel_batches(images, 64), progress=False).flops_ratio,
             "evit": evaluate(evit, pixel_batches(images, 64), progress=False).flops_ratio,
             "sait_mass": evaluate(mass, pixel_batches(images, 64), progress=False).flops_ratio}
    flops["sait_mass_no_regroup"] = flops["sait_mass"]
    variants = {
        "dense_hf": lambda b: plain.model(**b).logits,
        "engine_dense": lambda b: _engine_dense(plain, b),
        "sait": lambda b: sait(**b).logits,
        "sait_mass": lambda b: mass(**b).logits,
        "sait_mass_no_regroup": lambda b: _one_padded_batch(mass, b),
        "tome": lambda b: tome(**b).logits,
        "evit": lambda b: evit(**b).logits,
    }
    results = {}
    for batch_size in args.batch_sizes:
        n = 48 if batch_size == 1 else 4 * batch_size
        batches = [{"pixel_values": p.to(device)}
                   for p, _ in pixel_batches(images, batch_size)][: max(1, n // batch_size)]
        speed = time_variants(variants, batches, args.repeats)
        # Speed-ups count against the faster dense model (our engine's kernels speed the dense model up too).
        results[str(batch_size)] = {}
        for name, v in speed.items():
            ratios = speedups(speed, name, dense=("dense_hf", "engine_dense"))
            results[str(batch_size)][name] = {
                **v, "speedup": ratios["speedup"], "speedup_vs_dense_hf": ratios["speedup_vs_transformers"],
                "latency_speedup": ratios["latency_speedup"], "flops_ratio": flops.get(name, 1.0),
                "speedup_over_flops_reduction": ratios["speedup"] * flops.get(name, 1.0)}
        for name, v in results[str(batch_size)].items():
            print(f"batch {batch_size:3d} {name:20s} {v['samples_per_s']:8.1f}/s  {v['latency_ms_median']:8.1f} ms  "
                  f"x{v['speedup']:.2f} (latency x{v['latency_speedup']:.2f}, vs transformers "
                  f"x{v['speedup_vs_dense_hf']:.2f})  FLOPs {v['flops_ratio']:.3f}", flush=True)
    result = {"benchmark": "vision_speed",
              "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine_info(), "threads": args.threads, "device": device_label(device),
                          "linear_kernel": sait.execution.effective_linear_kernel if device.type == "cpu" else "torch",
                          "execution": sait.execution.to_dict()},
              "settings": {"base_model": args.base, "sait": args.sait, "sait_level": args.sait_level,
                           "sait_policy": sait.policy.config().policy,
                           "mass_level": args.mass_level, "tome_r": tome_row["r"],
                           "evit_keep_rate": evit_row["keep_rate"], "resolution": res, "repeats": args.repeats,
                           "images": "seeded Fashion-MNIST test images (seed 3)"},
              "results": results}
    stem = f"vision_speed{suffix}{'_cuda' if device.type == 'cuda' else ''}"
    atomic_write_json(out / f"{stem}.json", result)
    plot(results, out / f"{stem}.png")


def _one_padded_batch(model, batch):
    """The input-adaptive model without regrouping: the whole batch padded to its longest survivor."""
    with model.options(regroup=False):
        return model(**batch).logits


def _engine_dense(model, batch):
    with model.pruning_disabled():
        return model(**batch).logits


def plot(results: dict, path: Path) -> None:
    from trimformer.report.plots import plt, save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, (bs, res) in zip(axes[0], results.items(), strict=True):
        names = list(res)
        ax.bar(names, [res[n]["speedup"] for n in names],
               color=["k", "grey", "C0", "C1", "wheat", "C4", "C3"][: len(names)])
        for i, n in enumerate(names):
            ax.text(i, res[n]["speedup"], f"{res[n]['speedup']:.2f}x\n"
                    f"F {res[n]['flops_ratio']:.2f}", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylim(0, 1.18 * max(res[n]["speedup"] for n in names))  # room for the labels
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_title(f"batch {bs}: speed-up vs the faster dense (F = FLOPs ratio)", fontsize=9)
        ax.set_ylabel("speed-up")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
