"""Deployment speed: a pruned model in ONNX Runtime (fp32 and int8, the pruning decision in the graph) against
transformers' eager fp32 forward and ORT's dense fp32 and dense int8 (``quantize_dynamic`` on the dense model: what
a user would pick instead), every variant timed in the same run, interleaved batch by batch.

Models: MiniLM LTP at 0.5 FLOPs on 20 Newsgroups (128 tokens), and DINOv2 ViT-S SaiT top-K 0.45 at 168 px on
Fashion-MNIST. Records latency and throughput per batch size, export times, file sizes and the accuracy of every
variant; ORT sessions run with ``session.intra_op.allow_spinning`` = 0 (spinning threads steal the CPU from the next
interleaved variant). Run it on an otherwise idle machine.

The trained checkpoints live in runs/ (git-ignored). Without them the script stops and says which is missing;
``--untrained`` then times untrained stand-ins instead (MiniLM with a random 20-class head, LTP thresholds calibrated
to 0.5 FLOPs on training texts; the converted DINOv2 backbone with a random head, SaiT top-K 0.45): latency only,
their accuracies mean nothing, and the JSON says so.

Usage: python benchmarks/export_speed.py [--task text vision] [--threads 2] [--repeats 3] [--accuracy-limit N]
       [--qdq 8] [--untrained] [--tag TAG]   -> benchmarks/results/export_speed[_TAG].json and .png
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import torch

from trimformer.bench import time_variants
from trimformer.data.batching import fixed_batches, sample_indices
from trimformer.envinfo import machine_info
from trimformer.evaluation import evaluate
from trimformer.export import onnx_accuracy, run, session, trace_to_onnx
from trimformer.export.quantize import quantize_onnx
from trimformer.io_utils import atomic_write_json
from trimformer.pruned import TokenPrunedModel

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {"text": {"checkpoint": ROOT / "runs/ng/ltp_0.5", "batch_sizes": (1, 32)},
            "vision": {"checkpoint": ROOT / "runs/vision/sait", "batch_sizes": (1, 64)}}


def trained(task: str, path: Path, level: float):
    """(pruned model, test data, collate, resolution) of a trained checkpoint; FileNotFoundError naming it."""
    from trimformer.checkpoint import is_checkpoint
    from trimformer.loading import load_any, model_resolution

    if not is_checkpoint(str(path)):
        raise FileNotFoundError(f"no trained {task} checkpoint at {path} (runs/ is git-ignored: train it as "
                                "docs/benchmarks.md says, pass its folder, or run with --untrained for latency only)")
    loaded = load_any(path, task)
    if task == "text":
        from trimformer.data.text import load_text_data, text_collate

        return loaded.model, load_text_data("20newsgroups", "test"), text_collate(loaded.tokenizer, 128), None
    from trimformer.data.images import image_collate, load_image_data

    loaded.model.policy.set_level(level)
    res = model_resolution(loaded.model, loaded.meta)
    return loaded.model, load_image_data("fashion_mnist", "test", res), image_collate, res


def untrained(task: str, level: float):
    """Untrained stand-ins of the two models (latency only): see the module docstring."""
    import trimformer

    if task == "text":
        from transformers import AutoTokenizer, BertForSequenceClassification

        from trimformer.assets import minilm_path
        from trimformer.data.batching import calibration_batches
        from trimformer.data.text import load_text_data, text_collate
        from trimformer.methods.ltp import calibrate_ltp

        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=20).eval()
        collate = text_collate(AutoTokenizer.from_pretrained(minilm_path()), 128)
        pruned = trimformer.prune(model, trimformer.LTPConfig(target_flops=0.5)).eval()
        calib = calibration_batches(load_text_data("20newsgroups", "train"), collate, 32, 4)
        calibrate_ltp(pruned, calib, 0.5)
        return pruned, load_text_data("20newsgroups", "test"), collate, None
    from transformers import Dinov2ForImageClassification

    from trimformer.data.images import image_collate, load_image_data
    from trimformer.vision.dinov2_onnx import convert_onnx_to_dinov2, dinov2_vits14_config

    torch.manual_seed(0)
    model = Dinov2ForImageClassification(dinov2_vits14_config(num_labels=10)).eval()  # 518 px positions, interpolated
    model.dinov2.load_state_dict(convert_onnx_to_dinov2().state_dict(), strict=False)
    pruned = trimformer.prune(model, trimformer.SaiTConfig(default_level=level)).eval()
    return pruned, load_image_data("fashion_mnist", "test", 168), image_collate, 168


def train_split(task: str, resolution: int | None):
    """The training data of the benchmark's task (QDQ calibration)."""
    if task == "text":
        from trimformer.data.text import load_text_data

        return load_text_data("20newsgroups", "train")
    from trimformer.data.images import load_image_data

    return load_image_data("fashion_mnist", "train", resolution)


def export_variants(model: TokenPrunedModel, workdir: Path, resolution: int | None,
                    calibration: list[dict] | None = None) -> dict[str, dict]:
    """Dense and pruned graphs, fp32 and int8 (quantize_dynamic; with ``calibration`` batches also the pruned QDQ
    graph, to settle which int8 scheme is faster), with their export times and sizes."""
    dense = TokenPrunedModel(model.model).eval()
    out = {}
    for name, m in (("ort_dense", dense), ("ort_pruned", model)):
        start = time.perf_counter()
        fp32 = trace_to_onnx(m, workdir / f"{name}.onnx", resolution=resolution)
        mid = time.perf_counter()
        int8 = quantize_onnx(fp32, workdir / f"{name}_int8.onnx", "dynamic")
        end = time.perf_counter()
        out[f"{name}_fp32"] = {"path": fp32, "export_s": mid - start, "size_mb": fp32.stat().st_size / 2**20}
        out[f"{name}_int8"] = {"path": int8, "export_s": end - start, "size_mb": int8.stat().st_size / 2**20}
        if calibration and name == "ort_pruned":
            qdq = quantize_onnx(fp32, workdir / f"{name}_qdq.onnx", "qdq", calibration)
            out[f"{name}_qdq"] = {"path": qdq, "export_s": time.perf_counter() - start,
                                  "size_mb": qdq.stat().st_size / 2**20}
    return out


def measure(task: str, model: TokenPrunedModel, data, collate, resolution, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        calibration = None
        if args.qdq:  # a fixed sample of training batches, as trimformer's calibration draws them
            from trimformer.data.batching import calibration_batches

            calibration = calibration_batches(train_split(task, resolution), collate, 32, args.qdq)
        graphs = export_variants(model, Path(tmp), resolution, calibration)
        sessions = {name: session(g["path"]) for name, g in graphs.items()}
        variants = {"eager_fp32": lambda b: model.model(**b).logits,
                    **{name: (lambda b, s=s: run(s, b)) for name, s in sessions.items()}}
        timing, flops = {}, {}
        for batch_size in args.batch_sizes or DEFAULTS[task]["batch_sizes"]:
            count = args.batch1_samples if batch_size == 1 else args.batches * batch_size
            batches = fixed_batches(data, collate, batch_size, indices=sample_indices(len(data), count, seed=3))
            timing[str(batch_size)] = time_variants(variants, batches, args.repeats)
            flops[str(batch_size)] = evaluate(model, fixed_batches(data, collate, batch_size, labels=True,
                                              indices=sample_indices(len(data), count, seed=3)),
                                              progress=False).flops_ratio
            for name, v in timing[str(batch_size)].items():
                print(f"{task} batch {batch_size:3d} {name:16s} {v['latency_ms_median']:9.2f} ms "
                      f"{v['samples_per_s']:9.1f}/s", flush=True)
        scored = fixed_batches(data, collate, 32, labels=True,
                               indices=sample_indices(len(data), args.accuracy_limit or len(data), seed=0))
        with model.options(pruning=False):
            eager = evaluate(model, scored, progress=False).accuracy  # the engine's dense = transformers' forward
        accuracy = {"eager_fp32": eager, **{n: onnx_accuracy(s, scored)["accuracy"] for n, s in sessions.items()}}
    return {"timing": timing, "flops_ratio": flops, "accuracy": accuracy,
            "accuracy_examples": sum(len(b["labels"]) for b in scored),
            "graphs": {n: {k: v for k, v in g.items() if k != "path"} for n, g in graphs.items()}}


def ratios(timing: dict) -> dict:
    """Latency and throughput gains of the pruned graphs over each reference, per batch size."""
    out = {}
    for bs, speed in timing.items():
        out[bs] = {f"{p}_vs_{ref}": {"latency": speed[ref]["latency_ms_median"] / speed[p]["latency_ms_median"],
                                     "throughput": speed[p]["samples_per_s"] / speed[ref]["samples_per_s"]}
                   for p in ("ort_pruned_fp32", "ort_pruned_int8", "ort_pruned_qdq") if p in speed
                   for ref in ("eager_fp32", "ort_dense_fp32", "ort_dense_int8")}
    return out


def plot(results: dict, path: Path) -> None:
    from trimformer.report.plots import plt, save_figure

    panels = [(task, bs, r["timing"][bs]) for task, r in results.items() for bs in r["timing"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (task, bs, speed) in zip(axes[0], panels, strict=True):
        names = list(speed)
        base = speed["eager_fp32"]["samples_per_s"]
        ax.bar(range(len(names)), [speed[n]["samples_per_s"] / base for n in names],
               color=["k", "grey", "silver", "C0", "C1", "C2"][: len(names)])
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_title(f"{task}, batch {bs}", fontsize=9)
        ax.set_ylabel("throughput / transformers eager fp32", fontsize=8)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", nargs="+", choices=("text", "vision"), default=["text", "vision"])
    ap.add_argument("--text", default=str(DEFAULTS["text"]["checkpoint"]), help="MiniLM LTP 0.5 checkpoint")
    ap.add_argument("--vision", default=str(DEFAULTS["vision"]["checkpoint"]), help="DINOv2 SaiT checkpoint (168 px)")
    ap.add_argument("--level", type=float, default=0.45, help="SaiT top-K level (default 0.45)")
    ap.add_argument("--untrained", action="store_true", help="time untrained stand-ins where a checkpoint is missing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 32 (text), 1 64 (vision)")
    ap.add_argument("--batch1-samples", type=int, default=48, help="inputs timed one by one (default 48)")
    ap.add_argument("--batches", type=int, default=4, help="batches timed at the larger sizes (default 4)")
    ap.add_argument("--accuracy-limit", type=int, default=None, help="seeded subset of the test set (default: all)")
    ap.add_argument("--qdq", type=int, default=0, metavar="N",
                    help="also time the pruned graph in static QDQ int8, calibrated on N training batches of 32")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results, stand_ins = {}, []
    for task in args.task:
        path = Path(args.text if task == "text" else args.vision)
        try:
            model, data, collate, res = trained(task, path, args.level)
        except FileNotFoundError as err:
            if not args.untrained:
                raise SystemExit(f"export_speed: {err}") from err
            print(f"export_speed: {err}; timing an untrained stand-in (latency only)", flush=True)
            model, data, collate, res = untrained(task, args.level)
            stand_ins.append(task)
        results[task] = measure(task, model, data, collate, res, args)
        results[task]["ratios"] = ratios(results[task]["timing"])
        results[task]["untrained_stand_in"] = task in stand_ins
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record = {"benchmark": "export_speed", "created_utc": created,
              "machine": {**machine_info(), "threads": args.threads, "ort_intra_op_allow_spinning": 0},
              "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
              "untrained_stand_ins": stand_ins, "results": results}
    out = Path(args.out_dir)
    stem = f"export_speed{'_' + args.tag if args.tag else ''}"
    atomic_write_json(out / f"{stem}.json", record)
    plot(results, out / f"{stem}.png")
    print(f"wrote {out / stem}.json and .png")


if __name__ == "__main__":
    main()
