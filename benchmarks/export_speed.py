"""Deployment speed: a pruned model in ONNX Runtime (fp32 and int8, the pruning decision in the graph) against
transformers' eager fp32 forward and ORT's dense fp32 and dense int8 (``quantize_dynamic`` on the dense model: what
a user would pick instead), every variant timed in the same run, interleaved batch by batch.

Models: MiniLM LTP at 0.5 FLOPs on 20 Newsgroups (128 tokens), and DINOv2 ViT-S SaiT top-K 0.45 at 168 px on
Fashion-MNIST. Records latency and throughput per batch size (medians, paired ratios, the spread of each variant
over the repeats and the load average around each timing), export times, file sizes and the accuracy of every
variant with its 95% band. Every setting that changes a timing is recorded: torch and ORT threads, ORT's
``session.intra_op.allow_spinning`` (0 by default: spinning threads steal the CPU from the next interleaved
variant), the attention kernel of the eager model.

The oracle variants (``oracle_dense_*``) bound what pruning could give in ONNX Runtime: the dense graph on inputs
already cut to the pruned model's FLOPs (text: the first ceil(ratio x width) tokens; vision: the dense graph
exported at the resolution with that share of patches). They time only; their accuracy means nothing.

``--compile`` adds item 3 of the issue: ``torch.compile`` (inductor) of the dense and the pruned model, timed
against each other and transformers' eager forward at the larger batch size, with the compile times.

The trained checkpoints live in runs/ (git-ignored). Without them the script stops and says which is missing;
``--untrained`` then times untrained stand-ins instead (MiniLM with a random 20-class head, LTP thresholds calibrated
to 0.5 FLOPs on training texts; the converted DINOv2 backbone with a random head, SaiT top-K 0.45): latency only,
their accuracy is not measured, and the JSON says so.

Usage: python benchmarks/export_speed.py [--task text vision] [--threads 2] [--repeats 3] [--accuracy-limit N]
       [--qdq 8] [--compile] [--untrained] [--tag TAG]   -> benchmarks/results/export_speed[_TAG].json and .png
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# torch's OpenMP threads spin-wait after each parallel region by default; beside other busy processes that makes a
# 2-thread forward 10-50x slower (measured here at load 9: 2-3 s instead of 53 ms at batch 1). Timing therefore runs
# with passive waiting, the counterpart of ORT's allow_spinning = 0, unless the environment sets it; it is recorded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trimformer.bench import paired_speedup, time_variants, timing_spread  # noqa: E402
from trimformer.data.batching import calibration_batches, fixed_batches, sample_indices  # noqa: E402
from trimformer.envinfo import machine_info  # noqa: E402
from trimformer.export import run, session, trace_to_onnx  # noqa: E402
from trimformer.export.quantize import quantize_onnx  # noqa: E402
from trimformer.io_utils import atomic_write_json  # noqa: E402
from trimformer.pruned import TokenPrunedModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {"text": {"checkpoint": ROOT / "runs/ng/ltp_0.5", "batch_sizes": (1, 32)},
            "vision": {"checkpoint": ROOT / "runs/vision/sait", "batch_sizes": (1, 64)}}
PRUNED = ("ort_pruned_fp32", "ort_pruned_int8", "ort_pruned_qdq", "oracle_dense_fp32", "oracle_dense_int8")
REFERENCES = ("eager_fp32", "ort_dense_fp32", "ort_dense_int8")
GOALS = {"batch1_vs_eager_fp32": 3.0, "batch1_vs_ort_dense_int8": 1.6, "accuracy_points": 1.0,
         "batch_vs_eager_fp32": 3.0, "batch_vs_ort_dense_int8": 1.7, "compile_share_of_flops_reduction": 0.9}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def trained(task: str, path: Path, level: float):
    """(pruned model, test data, collate, resolution, recipe) of a trained checkpoint; FileNotFoundError naming it."""
    from trimformer.checkpoint import is_checkpoint
    from trimformer.loading import load_any, model_resolution

    if not is_checkpoint(str(path)):
        raise FileNotFoundError(f"no trained {task} checkpoint at {path} (runs/ is git-ignored: train it as "
                                "docs/benchmarks.md says, pass its folder, or run with --untrained for latency only)")
    loaded = load_any(path, task)
    recipe = loaded.meta.get("recipe", {})
    if task == "text":
        from trimformer.data.text import load_text_data, text_collate

        data = load_text_data("20newsgroups", "test")
        return loaded.model, data, text_collate(loaded.tokenizer, 128), None, recipe
    from trimformer.data.images import image_collate, load_image_data

    loaded.model.policy.set_level(level)
    res = model_resolution(loaded.model, loaded.meta)
    return loaded.model, load_image_data("fashion_mnist", "test", res), image_collate, res, recipe


def untrained(task: str, level: float):
    """Untrained stand-ins of the two models (latency only): see the module docstring."""
    import trimformer

    if task == "text":
        from transformers import AutoTokenizer, BertForSequenceClassification

        from trimformer.assets import minilm_path
        from trimformer.data.text import load_text_data, text_collate
        from trimformer.methods.ltp import calibrate_ltp

        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=20).eval()
        collate = text_collate(AutoTokenizer.from_pretrained(minilm_path()), 128)
        pruned = trimformer.prune(model, trimformer.LTPConfig(target_flops=0.5)).eval()
        calib = calibration_batches(load_text_data("20newsgroups", "train"), collate, 32, 4)
        calibrate_ltp(pruned, calib, 0.5)
        return pruned, load_text_data("20newsgroups", "test"), collate, None, {"untrained": True}
    from transformers import Dinov2ForImageClassification

    from trimformer.data.images import image_collate, load_image_data
    from trimformer.vision.dinov2_onnx import convert_onnx_to_dinov2, dinov2_vits14_config

    torch.manual_seed(0)
    model = Dinov2ForImageClassification(dinov2_vits14_config(num_labels=10)).eval()  # 518 px positions, interpolated
    model.dinov2.load_state_dict(convert_onnx_to_dinov2().state_dict(), strict=False)
    pruned = trimformer.prune(model, trimformer.SaiTConfig(default_level=level)).eval()
    return pruned, load_image_data("fashion_mnist", "test", 168), image_collate, 168, {"untrained": True}


def train_split(task: str, resolution: int | None):
    """The training data of the benchmark's task (QDQ calibration)."""
    if task == "text":
        from trimformer.data.text import load_text_data

        return load_text_data("20newsgroups", "train")
    from trimformer.data.images import load_image_data

    return load_image_data("fashion_mnist", "train", resolution)


def oracle_resolution(resolution: int, patch: int, ratio: float) -> int:
    """The side (a multiple of ``patch``) whose patch count is nearest ``ratio`` x that of ``resolution``."""
    side = resolution // patch
    return patch * max(1, round(side * math.sqrt(ratio)))


def cut_to_flops(batch: dict, ratio: float, oracle_res: int | None) -> dict:
    """The oracle's input: text cut to the first ceil(ratio x width) tokens, images resized to ``oracle_res``."""
    if oracle_res is not None:
        return {"pixel_values": F.interpolate(batch["pixel_values"], size=(oracle_res, oracle_res), mode="bilinear",
                                              align_corners=False)}
    width = max(2, math.ceil(ratio * batch["input_ids"].shape[1]))
    return {k: v[:, :width] for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def export_variants(model: TokenPrunedModel, workdir: Path, resolution: int | None, int8: str,
                    calibration: list[dict] | None, oracle_res: int | None) -> dict[str, dict]:
    """Dense and pruned graphs, fp32 and int8 (``quantize_dynamic`` int8 weights per channel; with ``calibration``
    batches also the pruned static QDQ graph, to settle which int8 scheme is faster), with export times and sizes;
    ``oracle_res``: the dense graph also at that resolution (vision oracle)."""
    dense = TokenPrunedModel(model.model).eval()
    out = {}

    def add(name: str, m: TokenPrunedModel, res: int | None, qdq: bool) -> None:
        start = time.perf_counter()
        fp32 = trace_to_onnx(m, workdir / f"{name}.onnx", resolution=res)
        mid = time.perf_counter()
        q = quantize_onnx(fp32, workdir / f"{name}_int8.onnx", int8)
        end = time.perf_counter()
        out[f"{name}_fp32"] = {"path": fp32, "export_s": mid - start, "size_mb": fp32.stat().st_size / 2**20}
        out[f"{name}_int8"] = {"path": q, "export_s": end - start, "size_mb": q.stat().st_size / 2**20,
                               "int8": int8}
        if qdq:
            s = time.perf_counter()
            path = quantize_onnx(fp32, workdir / f"{name}_qdq.onnx", "qdq", calibration)
            out[f"{name}_qdq"] = {"path": path, "export_s": mid - start + time.perf_counter() - s,
                                  "size_mb": path.stat().st_size / 2**20, "int8": "qdq",
                                  "calibration_batches": len(calibration)}

    add("ort_dense", dense, resolution, False)
    add("ort_pruned", model, resolution, bool(calibration))
    if oracle_res is not None:
        add("oracle_dense", dense, oracle_res, False)
        for key in ("oracle_dense_fp32", "oracle_dense_int8"):
            out[key]["resolution"] = oracle_res
    return out


def batch_flops_ratio(model: TokenPrunedModel, batches: list[dict]) -> float:
    """The pruned model's FLOPs over dense FLOPs on ``batches`` (unlabelled; packed execution)."""
    flops = dense = 0.0
    with torch.inference_mode():
        for batch in batches:
            out = model(**batch)
            flops += float(out.flops.sum())
            dense += float(out.dense_flops.sum())
    return flops / dense


def timing_block(variants: dict[str, Callable], batches: list[dict], repeats: int) -> dict:
    """``time_variants`` with the load average before and after, each variant's spread and paired ratios."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    speed = time_variants(variants, batches, repeats)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()
    for name, v in speed.items():
        v["spread"] = timing_spread(speed, name, len(batches))
        v["seconds"] = [round(s, 6) for s in v["seconds"]]
    paired = {f"{p}_vs_{ref}": paired_speedup(speed, p, ref) for p in speed for ref in REFERENCES
              if ref in speed and p != ref and (p in PRUNED or p.startswith("compile") or p == "eager_pruned")}
    return {"variants": speed, "paired_speedups": paired, "batches": len(batches), "repeats": repeats,
            "samples": sum(int(next(iter(b.values())).shape[0]) for b in batches), "wall_s": seconds,
            "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": load_after}


def accuracies(variants: dict[str, Callable], scored: list[dict]) -> dict:
    """Accuracy (%) of each variant on the labelled ``scored`` batches, its binomial 95% half-width and its paired
    difference from ``eager_fp32`` (points) with that difference's 95% half-width."""
    preds = {}
    with torch.inference_mode():
        for name, fn in variants.items():
            preds[name] = np.concatenate([np.asarray(fn(b)).argmax(-1) for b in scored])
    labels = np.concatenate([b["labels"].numpy() for b in scored])
    n, out = len(labels), {}
    base = preds["eager_fp32"] == labels
    for name, p in preds.items():
        right = p == labels
        acc = float(right.mean())
        diff = right.astype(float) - base.astype(float)
        out[name] = {"accuracy": 100 * acc, "band95": 100 * 1.96 * math.sqrt(acc * (1 - acc) / n),
                     "delta_vs_eager_fp32": 100 * float(diff.mean()),
                     "delta_band95": 100 * 1.96 * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else None,
                     "agreement_with_eager_fp32": float((p == preds["eager_fp32"]).mean())}
    return {"examples": n, "variants": out}


def logits(x) -> np.ndarray:
    return x["logits"] if isinstance(x, dict) else x.detach().float().numpy()


def compile_block(model: TokenPrunedModel, batches: list[dict], repeats: int) -> dict:
    """torch.compile (inductor) of the dense and the pruned model, timed with transformers' eager forward; the first
    call's time (compilation) is recorded per model. Text also times the oracle: the compiled dense model on inputs
    cut to the pruned FLOPs (the bound of what pruning can give under torch.compile)."""
    from trimformer.export import compile_pruned

    ratio = batch_flops_ratio(model, batches)
    dense = TokenPrunedModel(model.model).eval()
    pruned = TokenPrunedModel(model.model, model.policy, model.execution).eval()
    runs, compile_s = {}, {}
    for name, m in (("compile_dense", dense), ("compile_pruned", pruned)):
        fn = compile_pruned(m)
        start = time.perf_counter()
        with torch.inference_mode():
            fn(**batches[0])
        compile_s[name] = time.perf_counter() - start
        runs[name] = lambda b, fn=fn: fn(**b).logits
        print(f"compiled {name} in {compile_s[name]:.0f} s", flush=True)
    if "input_ids" in batches[0]:
        cut = {id(b): cut_to_flops(b, ratio, None) for b in batches}
        dense_fn = runs["compile_dense"]
        start = time.perf_counter()
        with torch.inference_mode():
            dense_fn(cut[id(batches[0])])  # a new width: a recompile, if any, happens here
        compile_s["oracle_compile_dense"] = time.perf_counter() - start
        runs["oracle_compile_dense"] = lambda b: dense_fn(cut[id(b)])
    block = timing_block({"eager_fp32": lambda b: model.model(**b).logits, **runs}, batches, repeats)
    block["compile_s"] = compile_s
    block["flops_ratio"] = ratio
    for name in ("compile_pruned", "oracle_compile_dense"):
        if name in block["variants"]:
            block["paired_speedups"][f"{name}_vs_compile_dense"] = paired_speedup(block["variants"], name,
                                                                                  "compile_dense")
    for name, v in block["variants"].items():
        print(f"batch {len(batches[0]['input_ids' if 'input_ids' in batches[0] else 'pixel_values'])} {name:20s} "
              f"{v['latency_ms_median']:9.2f} ms spread {v['spread'] or 0:.3f}", flush=True)
    return block


def measure(task: str, model: TokenPrunedModel, data, collate, resolution, args, stand_in: bool) -> dict:
    sizes = args.batch_sizes or DEFAULTS[task]["batch_sizes"]
    timed = {}
    for bs in sizes:
        count = args.batch1_samples if bs == 1 else args.batches * bs
        timed[bs] = fixed_batches(data, collate, bs, indices=sample_indices(len(data), count, seed=3))
    ratios = {bs: batch_flops_ratio(model, b) for bs, b in timed.items()}
    oracle_res = (oracle_resolution(resolution, model.model.config.patch_size, ratios[max(sizes)])
                  if task == "vision" else None)
    with tempfile.TemporaryDirectory() as tmp:
        calibration = calibration_batches(train_split(task, resolution), collate, 32, args.qdq) if args.qdq else None
        graphs = export_variants(model, Path(tmp), resolution, "dynamic", calibration, oracle_res)
        sessions = {name: session(g["path"], threads=args.threads, spinning=args.spinning)
                    for name, g in graphs.items()}
        ort_options = next(iter(sessions.values())).get_session_options()
        graph_variants = {n: (lambda b, s=s: run(s, b)["logits"]) for n, s in sessions.items()
                          if not n.startswith("oracle")}
        variants = {"eager_fp32": lambda b: model.model(**b).logits, "eager_pruned": lambda b: model(**b).logits,
                    **graph_variants}
        # the oracle: the dense graph on cut inputs (vision: the dense graph exported at the oracle's resolution)
        oracle_sessions = {f"oracle_dense_{p}": sessions.get(f"oracle_dense_{p}", sessions[f"ort_dense_{p}"])
                           for p in ("fp32", "int8")}
        timing = {}
        for bs, batches in timed.items():
            cut = {id(b): cut_to_flops(b, ratios[bs], oracle_res) for b in batches}
            oracles = {name: (lambda b, s=s, c=cut: run(s, c[id(b)])) for name, s in oracle_sessions.items()}
            timing[str(bs)] = timing_block({**variants, **oracles}, batches, args.repeats)
            timing[str(bs)]["flops_ratio"] = ratios[bs]
            timing[str(bs)]["oracle_input"] = ({"resolution": oracle_res} if oracle_res else
                                               {"widths": [int(c["input_ids"].shape[1]) for c in cut.values()]})
            for name, v in timing[str(bs)]["variants"].items():
                print(f"{task} batch {bs:3d} {name:18s} {v['latency_ms_median']:9.2f} ms {v['samples_per_s']:8.1f}/s "
                      f"spread {v['spread'] or 0:.3f}", flush=True)
        compiled = compile_block(model, timed[max(sizes)], args.repeats) if args.compile else None
        accuracy = None
        if not stand_in:
            limit = args.accuracy_limit or len(data)
            scored = fixed_batches(data, collate, 32, labels=True, indices=sample_indices(len(data), limit, seed=0))
            start = time.perf_counter()
            accuracy = accuracies({"eager_fp32": lambda b: logits(model.model(**b).logits),
                                   "eager_pruned": lambda b: logits(model(**b).logits),
                                   **{n: (lambda b, s=s: run(s, b)["logits"]) for n, s in sessions.items()
                                      if not n.startswith("oracle")}}, scored)
            accuracy["wall_s"] = time.perf_counter() - start
            accuracy["subset_seed"] = 0 if limit < len(data) else None
            accuracy["test_set_size"] = len(data)
    return {"timing": timing, "compile": compiled, "accuracy": accuracy,
            "accuracy_note": ("not measured: an untrained stand-in (latency only)" if stand_in else None),
            "graphs": {n: {k: v for k, v in g.items() if k != "path"} for n, g in graphs.items()},
            "runtime_settings": {
                "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
                "ort_intra_op_num_threads": ort_options.intra_op_num_threads,
                "ort_inter_op_num_threads": ort_options.inter_op_num_threads,
                "ort_allow_spinning": ort_options.get_session_config_entry("session.intra_op.allow_spinning"),
                "ort_execution_mode": str(ort_options.execution_mode),
                "ort_graph_optimization_level": str(ort_options.graph_optimization_level),
                "eager_attn_implementation": getattr(model.model.config, "_attn_implementation", None),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "grad": "torch.inference_mode", "dtype": "float32"}}


def goals(result: dict, int8_name: str) -> dict:
    """Each goal of issue 17 with the measured value, the oracle's value (the bound) and whether it is met."""
    out = {}
    sizes = sorted(result["timing"], key=int)
    for bs in sizes:
        paired = result["timing"][bs]["paired_speedups"]
        key = "batch1" if bs == "1" else "batch"
        for ref in ("eager_fp32", "ort_dense_int8"):
            target = GOALS[f"{key}_vs_{ref}"]
            value = paired[f"{int8_name}_vs_{ref}"]
            out[f"batch{bs}_{int8_name}_vs_{ref}"] = {
                "value": value, "goal": target, "met": value >= target,
                "oracle_dense_int8": paired.get(f"oracle_dense_int8_vs_{ref}"),
                "measure": "latency" if bs == "1" else "throughput (paired per-batch time ratio)"}
    acc = result.get("accuracy")
    if acc:
        v = acc["variants"][int8_name]
        out["accuracy_within_1_point"] = {"value": v["delta_vs_eager_fp32"], "band95": v["delta_band95"],
                                          "goal": -GOALS["accuracy_points"],
                                          "met": v["delta_vs_eager_fp32"] >= -GOALS["accuracy_points"],
                                          "examples": acc["examples"]}
    comp = result.get("compile")
    if comp:
        speedup = comp["paired_speedups"]["compile_pruned_vs_compile_dense"]
        reduction = 1 / comp["flops_ratio"]
        out["compile_speedup_vs_flops_reduction"] = {
            "value": speedup / reduction, "speedup": speedup, "flops_reduction": reduction,
            "oracle_speedup": comp["paired_speedups"].get("oracle_compile_dense_vs_compile_dense"),
            "goal": GOALS["compile_share_of_flops_reduction"],
            "met": speedup / reduction >= GOALS["compile_share_of_flops_reduction"]}
    return out


def faster_int8(result: dict) -> dict:
    """Dynamic vs static QDQ int8 of the pruned graph, by the paired per-batch time ratio at every batch size."""
    out = {}
    for bs, block in result["timing"].items():
        v = block["variants"]
        if "ort_pruned_qdq" in v:
            out[bs] = {"qdq_over_dynamic_time": paired_speedup(block["variants"], "ort_pruned_int8", "ort_pruned_qdq"),
                       "dynamic_ms": v["ort_pruned_int8"]["latency_ms_median"],
                       "qdq_ms": v["ort_pruned_qdq"]["latency_ms_median"]}
    return out


def plot(results: dict, path: Path) -> None:
    from trimformer.report.plots import plt, save_figure

    panels = [(task, bs, r["timing"][bs]["variants"]) for task, r in results.items() for bs in r["timing"]]
    panels += [(f"{task} torch.compile", r["compile"]["samples"] // r["compile"]["batches"], r["compile"]["variants"])
               for task, r in results.items() if r.get("compile")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    for ax, (task, bs, speed) in zip(axes[0], panels, strict=True):
        names = list(speed)
        base = speed["eager_fp32"]["samples_per_s"]
        colors = ["k" if n.startswith("eager") else "grey" if n.startswith("ort_dense") else
                  "C0" if n.startswith(("ort_pruned", "compile_pruned")) else "C3" for n in names]
        ax.bar(range(len(names)), [speed[n]["samples_per_s"] / base for n in names], color=colors)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.5)
        untrained = results[task.split()[0]]["untrained_stand_in"]
        ax.set_title(f"{task}{' (untrained)' if untrained else ''}, batch {bs}", fontsize=9)
        ax.set_ylabel("throughput / transformers eager fp32", fontsize=8)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", nargs="+", choices=("text", "vision"), default=["text", "vision"])
    ap.add_argument("--text", default=str(DEFAULTS["text"]["checkpoint"]), help="MiniLM LTP 0.5 checkpoint")
    ap.add_argument("--vision", default=str(DEFAULTS["vision"]["checkpoint"]), help="DINOv2 SaiT checkpoint (168 px)")
    ap.add_argument("--level", type=float, default=0.45, help="SaiT top-K level (default 0.45)")
    ap.add_argument("--untrained", action="store_true", help="time untrained stand-ins where a checkpoint is missing")
    ap.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads (default 2)")
    ap.add_argument("--spinning", action="store_true", help="let ORT's threads spin (default off, see above)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 32 (text), 1 64 (vision)")
    ap.add_argument("--batch1-samples", type=int, default=48, help="inputs timed one by one (default 48)")
    ap.add_argument("--batches", type=int, default=4, help="batches timed at the larger sizes (default 4)")
    ap.add_argument("--accuracy-limit", type=int, default=None, help="seeded subset of the test set (default: all)")
    ap.add_argument("--qdq", type=int, default=0, metavar="N",
                    help="also time the pruned graph in static QDQ int8, calibrated on N training batches of 32")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile dense vs pruned (item 3)")
    ap.add_argument("--compile-only", action="store_true",
                    help="time only torch.compile dense vs pruned at the larger batch size (no ONNX, no accuracy)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. how the checkpoint was trained)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()
    commit = git("rev-parse", "HEAD")  # the code that runs: read before the run, which can take long
    clean = not git("status", "--porcelain", "--", "src", "benchmarks/export_speed.py")
    torch.set_num_threads(args.threads)
    results, stand_ins = {}, []
    for task in args.task:
        path = Path(args.text if task == "text" else args.vision)
        try:
            model, data, collate, res, recipe = trained(task, path, args.level)
        except FileNotFoundError as err:
            if not args.untrained:
                raise SystemExit(f"export_speed: {err}") from err
            print(f"export_speed: {err}; timing an untrained stand-in (latency only)", flush=True)
            model, data, collate, res, recipe = untrained(task, args.level)
            stand_ins.append(task)
        model.eval()
        if args.compile_only:
            bs = max(args.batch_sizes or DEFAULTS[task]["batch_sizes"])
            batches = fixed_batches(data, collate, bs, indices=sample_indices(len(data), args.batches * bs, seed=3))
            results[task] = {"timing": {}, "compile": compile_block(model, batches, args.repeats), "graphs": {},
                             "runtime_settings": {"torch_threads": torch.get_num_threads(),
                                                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}}
        else:
            results[task] = measure(task, model, data, collate, res, args, task in stand_ins)
        results[task]["checkpoint"] = None if task in stand_ins else str(path.relative_to(ROOT) if path.is_relative_to(
            ROOT) else path)
        results[task]["checkpoint_recipe"] = recipe
        results[task]["untrained_stand_in"] = task in stand_ins
        results[task]["int8_dynamic_vs_qdq"] = faster_int8(results[task])
        results[task]["goals"] = goals(results[task], "ort_pruned_int8")
        if results[task]["int8_dynamic_vs_qdq"]:
            results[task]["goals_with_qdq"] = goals(results[task], "ort_pruned_qdq")
    import onnxruntime

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record = {"benchmark": "export_speed", "created_utc": created,
              "commit": commit, "worktree_clean": clean,
              "machine": {**machine_info(), "threads": args.threads, "onnxruntime": onnxruntime.__version__,
                          "ort_intra_op_allow_spinning": int(args.spinning)},
              "settings": {k: v for k, v in vars(args).items() if k != "out_dir"}, "goals": GOALS,
              "untrained_stand_ins": stand_ins, "results": results}
    out = Path(args.out_dir)
    stem = f"export_speed{'_' + args.tag if args.tag else ''}"
    atomic_write_json(out / f"{stem}.json", record)
    plot(results, out / f"{stem}.png")
    print(f"wrote {out / stem}.json and .png")


if __name__ == "__main__":
    main()
