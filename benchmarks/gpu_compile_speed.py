"""GPU speed of fixed-count token pruning under ``torch.compile``: compiled (inductor, CUDA graphs with
``mode="reduce-overhead"``) SaiT top-K against the compiled dense model, and both eager, in the same run.

Issue 17's GPU item: on a lent GPU, the fixed-count policies at batch 1, 64 and 256 (goal: SaiT top-K >= 1.5x
dense at batch 64). On unpadded images a fixed-count policy packs to a width known from the shapes, so the
pruned forward is one graph without data-dependent sizes and CUDA graphs can replay it (docs/export.md).

Variants, interleaved batch by batch (:func:`trimformer.bench.time_variants`, synchronised around every call):
- ``hf_eager``: transformers' eager forward of the dense model (its default SDPA attention);
- ``hf_compiled``: ``torch.compile(dense, mode=MODE)``, what a user would pick instead;
- ``engine_dense_compiled``: trimformer's engine with pruning off, compiled the same way (the control);
- ``sait_eager``: trimformer's packed engine, SaiT top-K at ``--level``;
- ``sait_compiled``: ``compile_pruned(pruned, in_graph=True, mode=MODE)`` (fullgraph: a break would raise).
Each compiled variant is checked against eager on the same batch (kept tokens equal, largest logit difference) and
its compile time (first call per batch size) is recorded. Latency only: accuracy is measured elsewhere on the
CPU (the weights are the same). ONNX Runtime's CUDA execution provider is timed only where it is installed (the
providers found are recorded).

Usage: python benchmarks/gpu_compile_speed.py [--checkpoint runs/vision168/sait | --untrained] [--level 0.45]
       [--batch-sizes 1 64 256] [--dtypes float32 bfloat16] [--mode reduce-overhead] [--budget-s 300]
       [--commit HASH] [--tag TAG]   -> benchmarks/results/gpu_compile_speed[_TAG].json and .png
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

import trimformer
from trimformer.bench import paired_speedup, time_variants, timing_spread
from trimformer.envinfo import machine_info
from trimformer.export import compile_pruned
from trimformer.io_utils import atomic_write_json
from trimformer.pruned import TokenPrunedModel

ROOT = Path(__file__).resolve().parent.parent
GOAL = {"batch": 64, "variant": "sait_compiled", "over": "hf_compiled", "speedup": 1.5}


def load_models(checkpoint: str | None, level: float) -> tuple[TokenPrunedModel, dict]:
    """The SaiT model (trained checkpoint, or the DINOv2 ViT-S/14 layout with random weights) and its record."""
    if checkpoint is None:
        from transformers import Dinov2ForImageClassification

        from trimformer.vision.dinov2_onnx import dinov2_vits14_config

        torch.manual_seed(0)
        dense = Dinov2ForImageClassification(dinov2_vits14_config(num_labels=10)).eval()
        return trimformer.prune(dense, trimformer.SaiTConfig(default_level=level)).eval(), {"untrained": True}
    from trimformer.loading import load_any

    loaded = load_any(checkpoint, "vision")
    loaded.model.policy.set_level(level)
    return loaded.model, {"checkpoint": str(checkpoint), "recipe": loaded.meta.get("recipe", {})}


def image_batches(batch_size: int, count: int, resolution: int, device: torch.device, dtype: torch.dtype,
                  untrained: bool) -> list[dict]:
    """``count`` batches of Fashion-MNIST test images at ``resolution`` (random pixels for the untrained model)."""
    if untrained:
        g = torch.Generator().manual_seed(batch_size)
        return [{"pixel_values": torch.randn(batch_size, 3, resolution, resolution, generator=g).to(device, dtype)}
                for _ in range(count)]
    from trimformer.data.images import image_collate, load_image_data

    data = load_image_data("fashion_mnist", "test", resolution)
    need = batch_size * count
    rows = [data[i % len(data)] for i in range(need)]
    return [{"pixel_values": image_collate(rows[i:i + batch_size])["pixel_values"].to(device, dtype)}
            for i in range(0, need, batch_size)]


def compiled_call(fn: Callable, cuda_graphs: bool) -> Callable[[dict], object]:
    """``fn(**batch)``, marking a new CUDA graph step first where CUDA graphs replay."""

    def call(batch: dict) -> object:
        if cuda_graphs:  # a new step of the CUDA graph trees: earlier outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return fn(**batch)
    return call


def check(name: str, fn: Callable[[dict], object], want: object, batch: dict) -> dict:
    """Compile time (the first call) and agreement with the eager output ``want`` on ``batch``."""
    start = time.perf_counter()
    got = fn(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"first_call_s": seconds,
           "max_abs_logit_diff": float((got.logits.float() - want.logits.float()).abs().max())}
    if getattr(got, "n_out", None) is not None:
        out["kept_equal"] = bool(torch.equal(got.n_out, want.n_out))
    print(f"  {name}: first call {seconds:.1f} s, logits within {out['max_abs_logit_diff']:.2e}", flush=True)
    return out


def run_dtype(pruned: TokenPrunedModel, dtype: torch.dtype, args, untrained: bool, results: dict,
              save: Callable[[], None]) -> None:
    """Every variant at every batch size in ``dtype`` into ``results`` ({batch size: {flops_ratio, checks,
    variants}}), saving after each batch size (a run cut short keeps what it measured)."""
    device = torch.device(args.device)
    pruned = pruned.to(device=device, dtype=dtype).eval()
    pruned.rebuild_views()
    dense = pruned.model  # the same weights, transformers' own forward
    cuda_graphs = args.mode == "reduce-overhead" and args.backend == "inductor" and device.type == "cuda"
    torch._dynamo.reset()
    kwargs = {"backend": args.backend} | ({"mode": args.mode} if args.backend == "inductor" else {})
    compiled_engine = compile_pruned(pruned, in_graph=True, **kwargs)  # sets traceable=True on ``pruned``
    hf_compiled = torch.compile(dense, **kwargs)

    def eager_engine(batch: dict, pruning: bool = True) -> object:
        with pruned.options(traceable=False, pruning=pruning):
            return pruned(**batch)

    def compiled_dense_engine(batch: dict) -> object:
        with pruned.options(pruning=False):  # a second graph of the same compiled model (a guard on the options)
            return compiled_engine(**batch)

    variants = {
        "hf_eager": lambda b: dense(**b),
        "hf_compiled": compiled_call(hf_compiled, cuda_graphs),
        "engine_dense_compiled": compiled_call(lambda **b: compiled_dense_engine(b), cuda_graphs),
        "sait_eager": eager_engine,
        "sait_compiled": compiled_call(compiled_engine, cuda_graphs),
    }
    for batch_size in args.batch_sizes:
        batches = image_batches(batch_size, args.batches, args.resolution, device, dtype, untrained)
        with torch.no_grad():
            want_pruned, want_dense = eager_engine(batches[0]), eager_engine(batches[0], pruning=False)
            checks = {"hf_compiled": check("hf_compiled", variants["hf_compiled"], dense(**batches[0]), batches[0]),
                      "engine_dense_compiled": check("engine_dense_compiled", variants["engine_dense_compiled"],
                                                     want_dense, batches[0]),
                      "sait_compiled": check("sait_compiled", variants["sait_compiled"], want_pruned, batches[0])}
            outputs = [eager_engine(b) for b in batches]
            flops = float(sum(o.flops.sum() for o in outputs) / sum(o.dense_flops.sum() for o in outputs))
            speed = time_variants(variants, batches, args.repeats, warmup=2)
        row = {"flops_ratio": flops, "checks": checks, "variants": {}}
        for name in variants:
            row["variants"][name] = {
                "latency_ms_median": speed[name]["latency_ms_median"],
                "samples_per_s": speed[name]["samples_per_s"],
                "spread": timing_spread(speed, name, len(batches)),
                "vs_hf_eager": paired_speedup(speed, name, "hf_eager"),
                "vs_hf_compiled": paired_speedup(speed, name, "hf_compiled"),
            }
        results[str(batch_size)] = row
        save()
        print(f"batch {batch_size} {dtype}, FLOPs {flops:.3f}: " + ", ".join(
            f"{k} {v['latency_ms_median']:.2f} ms ({v['vs_hf_compiled']:.2f}x)" for k, v in row["variants"].items()),
            flush=True)
    pruned.set_options(traceable=False)


def ort_providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return []


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = [name for name, rows in record["results"].items() if rows]
    if not dtypes:
        return
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        rows = record["results"][dtype]
        sizes = list(rows)
        names = list(rows[sizes[0]]["variants"])
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            values = [rows[s]["variants"][name]["vs_hf_eager"] for s in sizes]
            ax.bar([i + j * width for i in range(len(sizes))], values, width, label=name)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], [f"batch {s}" for s in sizes])
        ax.set_ylabel("speed-up over transformers eager (paired median)")
        ax.set_title(f"{record['device']} {dtype}, SaiT top-K {record['level']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "runs/vision168/sait"))
    ap.add_argument("--untrained", action="store_true", help="random DINOv2 ViT-S/14 weights, random pixels")
    ap.add_argument("--level", type=float, default=0.45, help="SaiT top-K keep rate")
    ap.add_argument("--resolution", type=int, default=168)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--batches", type=int, default=4, help="batches per size")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--mode", default="reduce-overhead", help="torch.compile mode of every compiled variant")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: a quick smoke run)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of this script")
    ap.add_argument("--budget-s", type=float, default=300, help="skip the remaining dtypes once this is spent")
    ap.add_argument("--commit", default=None, help="the commit of this code (read from git where there is one)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--plot-only", metavar="JSON", help="draw the PNG of a results JSON (e.g. one cut short)")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.plot_only).read_text()), Path(args.plot_only).with_suffix(".png"))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_compile_speed needs a CUDA device (CPU timings: benchmarks/export_speed.py --compile)")
    start = time.perf_counter()
    pruned, source = load_models(None if args.untrained else args.checkpoint, args.level)
    commit = args.commit
    if commit is None:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    record = {"benchmark": "gpu_compile_speed", "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "commit": commit, "machine": machine_info(), "device": device,
              "level": args.level, "resolution": args.resolution, "mode": args.mode, "backend": args.backend,
              "repeats": args.repeats,
              "batches_per_size": args.batches, "source": source, "goal": GOAL,
              "tf32": torch.backends.cuda.matmul.allow_tf32, "onnxruntime_providers": ort_providers(),
              "results": {}, "skipped_dtypes": []}
    out = Path(args.out_dir) / f"gpu_compile_speed{'_' + args.tag if args.tag else ''}.json"

    def save() -> None:
        first = record["results"].get(args.dtypes[0], {}).get(str(GOAL["batch"]))
        if first is not None:
            got = first["variants"][GOAL["variant"]][f"vs_{GOAL['over']}"]
            record["goal_measured"] = {"speedup": got, "met": got >= GOAL["speedup"], "dtype": args.dtypes[0]}
        record["total_s"] = time.perf_counter() - start
        atomic_write_json(out, record)

    for name in args.dtypes:
        if time.perf_counter() - start > args.budget_s:
            record["skipped_dtypes"].append(name)
            continue
        print(f"== {name}", flush=True)
        record["results"][name] = {}
        run_dtype(pruned, getattr(torch, name), args, args.untrained, record["results"][name], save)
    save()
    plot(record, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
