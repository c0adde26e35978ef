"""OFARPruning on a Fashion-MNIST CNN: one once-for-all training against each sub-network trained alone.

One OFAR training (:func:`trimformer.structured.ofar.ofar_prune`) of the ResNet- or MobileNetV2-style CNN
(:mod:`trimformer.vision.cnn_zoo`) from scratch on the first ``--train-images`` training images yields one
sub-network per (FLOPs budget, resolution); each is extracted (physically pruned, batch norms recalibrated at its
resolution) and tested on the full 10k test set at its resolution. The baseline is the same sub-network (same
structure) re-initialised and trained alone (:func:`~trimformer.structured.baselines.from_scratch`) at its
resolution with the same per-network schedule (``--steps`` steps of AdamW at ``--lr``, cosine, batch
``--batch-size``, the same seeded batches). Costs are the wall-clock and the process CPU seconds of both ways on
this machine (one torch thread; the machine may be shared, which inflates wall-clock time: the load average is
recorded, and the goal is judged on CPU time). Writes benchmarks/results/structured_ofar.json
(+ .png); each model's entry is replaced when it is rerun, other models' entries are kept.

    python benchmarks/structured_ofar.py --model mobilenetv2 [--steps 400] [--train-images 15000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trimformer.envinfo import run_record
from trimformer.io_utils import atomic_write_json
from trimformer.structured import count_macs
from trimformer.structured.baselines import from_scratch
from trimformer.structured.ofar import ofar_prune
from trimformer.structured.ofar_config import OFARConfig
from trimformer.structured.ofar_masks import resize
from trimformer.structured.train import accuracy
from trimformer.vision.cnn_zoo import build_cnn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_cnn_zoo import fmnist_tensors  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "structured_ofar.json"


def timed(fn, *args, **kwargs) -> tuple[Any, float, float]:
    """(result, wall-clock seconds, this process's CPU seconds): with one torch thread the CPU time is the cost that
    the other jobs sharing the machine do not inflate."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def reused_alone(path: str, name: str, subnets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The trained-alone rows of an earlier run of this script (``--alone-from``), per "rate@resolution". A network
    trained alone depends only on its widths (re-initialised, same seed and schedule), so its row is reused only
    where the earlier run's widths equal this one's; ValueError otherwise."""
    entry = json.loads(Path(path).read_text())["models"][name]
    out = {}
    for row in entry["rows"]:
        key = f"{row['rate']:g}@{row['resolution']}"
        if entry["ofar_report"]["subnets"][key]["widths"] != subnets[key]["widths"]:
            raise ValueError(f"--alone-from {path}: the sub-network {key} has other widths there; train it alone")
        out[key] = {k: row[k] for k in ("alone_accuracy", "alone_seconds", "alone_cpu_seconds")}
        out[key]["alone_reused_from"] = f"{path} ({entry['commit'][:10]}, {entry['date']})"
    return out


def run_model(name: str, config: OFARConfig, args: argparse.Namespace) -> dict[str, Any]:
    x, y = fmnist_tensors("train", args.train_images)
    test_x, test_y = fmnist_tensors("test")
    torch.manual_seed(config.seed)
    dense = build_cnn(name).eval()  # freshly initialised: OFAR searches the structures early in training
    dense_macs = count_macs(dense, x[:1])[0]
    load = {"before": os.getloadavg()}
    result, ofar_seconds, ofar_cpu = timed(ofar_prune, dense, config, (x, y), progress=False)
    search = result.report["search"]
    print(f"{name}: OFAR trained in {ofar_seconds:.0f} s; search stopped at step {search['stopped_at']} "
          f"(converged: {search['converged']})", flush=True)
    reuse = reused_alone(args.alone_from, name, result.report["subnets"]) if args.alone_from else {}
    rows = []
    for rate in config.rates:
        for size in config.resolutions:
            sub, extract_seconds, extract_cpu = timed(result.subnet, rate, size, (x, y))
            test = (resize(test_x, size), test_y)
            macs, params = count_macs(sub, resize(x[:1], size))
            key = f"{rate:g}@{size}"
            if key in reuse:
                alone_row = reuse[key]
            else:
                alone, alone_seconds, alone_cpu = timed(from_scratch, sub, (resize(x, size), y), config.steps,
                                                        lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                                                        progress=False)
                alone_row = {"alone_accuracy": accuracy(alone.model, test), "alone_seconds": alone_seconds,
                             "alone_cpu_seconds": alone_cpu}
            row = {"rate": rate, "resolution": size, "macs": macs, "parameters": params,
                   "flops_fraction": macs / dense_macs, "ofar_accuracy": accuracy(sub, test),
                   "extract_seconds": extract_seconds, "extract_cpu_seconds": extract_cpu, **alone_row}
            row["difference"] = row["ofar_accuracy"] - row["alone_accuracy"]
            rows.append(row)
            print(f"{name} rate {rate:g} @ {size}px ({row['flops_fraction']:.3f} of dense FLOPs): OFAR "
                  f"{row['ofar_accuracy']:.4f}, alone {row['alone_accuracy']:.4f} ({row['alone_seconds']:.0f} s)",
                  flush=True)
    load["after"] = os.getloadavg()
    extract = sum(r["extract_seconds"] for r in rows)
    alone_total = sum(r["alone_seconds"] for r in rows)
    diffs = [r["difference"] for r in rows]
    cpu = {"ofar_cpu_seconds": ofar_cpu + sum(r["extract_cpu_seconds"] for r in rows),
           "alone_cpu_seconds": sum(r["alone_cpu_seconds"] for r in rows)}
    cpu["cpu_cost_ratio"] = cpu["ofar_cpu_seconds"] / cpu["alone_cpu_seconds"]
    summary = {"mean_difference": sum(diffs) / len(diffs), "min_difference": min(diffs),
               "ofar_seconds": ofar_seconds + extract, "ofar_training_seconds": ofar_seconds,
               "ofar_extraction_seconds": extract, "alone_seconds": alone_total,
               "cost_ratio": (ofar_seconds + extract) / alone_total, **cpu,
               "goal": "OFAR within 0.5 points of the sub-networks trained alone on average, at a fraction of the cost",
               "goal_met": sum(diffs) / len(diffs) >= -0.005 and cpu["cpu_cost_ratio"] < 1}
    print(f"{name}: mean OFAR - alone {100 * summary['mean_difference']:+.2f} points; cost "
          f"{summary['ofar_seconds']:.0f} s vs {alone_total:.0f} s ({summary['cost_ratio']:.2f}x; CPU time "
          f"{cpu['cpu_cost_ratio']:.2f}x)", flush=True)
    report = {k: v for k, v in result.report.items() if k != "losses"}
    report["final_losses"] = result.report["losses"][-10:]
    return {"dense_macs": dense_macs, "rows": rows, "summary": summary, "ofar_report": report, "load_average": load}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        rows = results["models"][name]["rows"]
        for size, color in zip(sorted({r["resolution"] for r in rows}, reverse=True), "bgrcmk", strict=False):
            mine = sorted((r for r in rows if r["resolution"] == size), key=lambda r: r["flops_fraction"])
            flops = [100 * r["flops_fraction"] for r in mine]
            ax.plot(flops, [100 * r["ofar_accuracy"] for r in mine], "o-", color=color, label=f"OFAR {size} px")
            ax.plot(flops, [100 * r["alone_accuracy"] for r in mine], "s--", color=color, mfc="none",
                    label=f"trained alone {size} px")
        summary = results["models"][name]["summary"]
        ax.set_title(f"{name}: one OFAR training ({summary['ofar_cpu_seconds']:.0f} CPU s) vs each alone "
                     f"({summary['alone_cpu_seconds']:.0f} CPU s)", fontsize=9)
        ax.set_xlabel("FLOPs (% of the dense model at 28 px)")
        ax.set_ylabel("test accuracy (%, 10k images)")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict[str, Any]) -> str:
    """The results as markdown (for docs/ofar.md): one table per entry, then its summary line."""
    parts = []
    for name, entry in results["models"].items():
        c, s = entry["config"], entry["summary"]
        search = entry["ofar_report"]["search"]
        parts += [f"**{name}** ({entry['options']['train_images']} training images, {c['steps']} steps of batch "
                  f"{c['batch_size']}, {c['subnets_per_step']} sub-networks per step, distill_weight "
                  f"{c['distill_weight']}; search stopped at step {search['stopped_at']}, converged: "
                  f"{search['converged']}; commit {entry['commit'][:10]})", "",
                  "| rate | resolution | FLOPs vs dense @28 px | OFAR (%) | trained alone (%) | difference (points) |",
                  "|---|---|---|---|---|---|"]
        for r in entry["rows"]:
            parts.append(f"| {r['rate']:g} | {r['resolution']} | {r['flops_fraction']:.3f} | "
                         f"{100 * r['ofar_accuracy']:.2f} | {100 * r['alone_accuracy']:.2f} | "
                         f"{100 * r['difference']:+.2f} |")
        parts += ["", f"Mean difference {100 * s['mean_difference']:+.2f} points (worst "
                  f"{100 * s['min_difference']:+.2f}). Cost: OFAR {s['ofar_cpu_seconds']:.0f} CPU s "
                  f"({s['ofar_seconds']:.0f} s wall) for all "
                  f"{len(entry['rows'])} sub-networks, against {s['alone_cpu_seconds']:.0f} CPU s "
                  f"({s['alone_seconds']:.0f} s wall) to train each alone: {s['cpu_cost_ratio']:.2f}x in CPU time. "
                  f"Goal met: {s['goal_met']}.", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("resnet", "mobilenetv2"), required=True)
    p.add_argument("--rates", default="0.75,0.5,0.35,0.25", help="FLOPs budgets, comma-separated")
    p.add_argument("--resolutions", default="28,20", help="input sizes in pixels, comma-separated")
    p.add_argument("--train-images", type=int, default=15000)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--search-interval", type=int, default=25)
    p.add_argument("--max-search-steps", type=int, default=150)
    p.add_argument("--similarity-threshold", type=float, default=0.98)
    p.add_argument("--subnets-per-step", type=int, default=2)
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--tag", default="", help="the entry's name is <model>-<tag> (a variant of the recipe)")
    p.add_argument("--alone-from", default="", help="reuse the trained-alone rows of this earlier results JSON "
                   "(entry <model>) where the widths are equal")
    p.add_argument("--table", action="store_true", help="print the results JSON as markdown and exit")
    args = p.parse_args(argv)
    if args.table:
        results = json.loads(Path(args.results).read_text())
        print(table(results))
        return results
    config = OFARConfig(rates=tuple(float(r) for r in args.rates.split(",")),
                        resolutions=tuple(int(s) for s in args.resolutions.split(",")), steps=args.steps,
                        search_interval=args.search_interval, max_search_steps=args.max_search_steps,
                        similarity_threshold=args.similarity_threshold, subnets_per_step=args.subnets_per_step,
                        distill_weight=args.distill_weight, lr=args.lr, batch_size=args.batch_size)
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src", "benchmarks/structured_ofar.py"],
                           capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    entry = run_model(args.model, config, args)
    entry.update({"config": config.to_dict(), "options": {k: v for k, v in vars(args).items() if k != "results"},
                  "seconds": time.perf_counter() - t0, **run_record(ROOT, argv)})
    entry["commit"] = commit + ("+uncommitted changes" if dirty else "")  # at the start of the run
    entry["versions"] = {"torch": torch.__version__, "torch_pruning": __import__("torch_pruning").__version__}
    out = Path(args.results)
    results = json.loads(out.read_text()) if out.is_file() else {"models": {}}
    # re-read just before writing: another model's run may have written
    results["models"][f"{args.model}-{args.tag}" if args.tag else args.model] = entry
    atomic_write_json(out, results)
    plot(results, out.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
