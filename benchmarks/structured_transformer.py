"""Heads + MLP channels, token pruning and PWLQ on one MiniLM: accuracy, FLOPs, size and measured speed of each
compression alone and composed, and each step's share.

Stages (each saved under ``--work`` and reused by a rerun with the same settings):
  dense        all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (``finetune_dense``)
  heads        dense -> ``prune_heads_`` to ``--target`` of the encoder FLOPs -> a short recovery fine-tune
  ltp          dense -> LTP (``--ltp-target``)
  pwlq         dense -> PWLQ W4A8 (+ bias correction), calibrated
  heads_ltp    heads -> LTP
  all          heads_ltp -> PWLQ W4A8: the three compressions in one saved model (reloaded and compared)

Speed is measured in this run, every model interleaved batch by batch (``trimformer.bench.time_variants``), at
batch 32 and batch 1, with ``--threads`` torch threads. Writes ``OUT.json`` and ``OUT.png``.

    python benchmarks/structured_transformer.py --out benchmarks/results/structured_minilm_rt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import trimformer
from trimformer.assets import minilm_path
from trimformer.bench import paired_speedup, time_variants, timing_spread
from trimformer.checkpoint import is_checkpoint, load, load_model
from trimformer.data.batching import calibration_batches, fixed_batches
from trimformer.data.text import load_text_data, text_collate, transformers_inputs
from trimformer.envinfo import machine_info
from trimformer.evaluation import evaluate
from trimformer.heads import HeadPruningConfig, prune_heads_
from trimformer.io_utils import atomic_write_json
from trimformer.methods import LTPConfig
from trimformer.pruned import TokenPrunedModel
from trimformer.quant import ActSpec, PWLQConfig
from trimformer.train.finetune import finetune_config, finetune_dense
from trimformer.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("dense", "heads", "ltp", "pwlq", "heads_ltp", "all")
LABELS = {"dense": "dense", "heads": "heads+MLP", "ltp": "LTP", "pwlq": "PWLQ W4A8", "heads_ltp": "heads+MLP+LTP",
          "all": "heads+MLP+LTP+PWLQ"}
SPEED_LABELS = {"dense": "dense (transformers)", "heads": "heads+MLP (transformers)", "dense_engine": "dense (engine)",
                "heads_engine": "heads+MLP (engine)"}


def wrapped(model) -> TokenPrunedModel:
    return model if isinstance(model, TokenPrunedModel) else TokenPrunedModel(model).eval()


def build_stage(name: str, args, work: Path, train, tokenizer, log: dict):
    """Train / prune / quantize one stage from the stages it builds on; returns the model (saved to work/name)."""
    collate = text_collate(tokenizer, args.max_length)
    calib = calibration_batches(train, collate, args.batch_size, 8, seed=args.seed)
    t0 = time.time()
    if name == "dense":
        model, _, _ = load_model(minilm_path(), label_names=train.label_names, seed=args.seed)
        cfg = finetune_config("text", batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
        finetune_dense(model.model, train, collate, cfg, steps=args.finetune_steps)
    elif name == "heads":
        model, _ = load(work / "dense")
        result = prune_heads_(model, HeadPruningConfig(target_flops=args.target, criterion=args.criterion,
                                                       calibration_batches=len(calib)), calib)
        log["heads_plan"] = {"flops_ratio_at_mean_length": result.plan.flops_ratio,
                             "mean_length": result.plan.length,
                             "heads_kept": [len(h) for h in result.plan.heads],
                             "mlp_kept": [len(c) for c in result.plan.channels]}
        cfg = finetune_config("text", batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
        finetune_dense(model, train, collate, cfg, steps=args.recovery_steps)
    elif name in ("ltp", "heads_ltp"):
        base, _ = load(work / ("dense" if name == "ltp" else "heads"))
        model = trimformer.prune(base, LTPConfig(target_flops=args.ltp_target, soft_steps=args.ltp_steps,
                                                 hard_steps=args.ltp_steps))
        trimformer.fit(model, train, TrainConfig(batch_size=args.batch_size, max_length=args.max_length,
                                                 seed=args.seed), tokenizer=tokenizer)
    else:  # pwlq, all
        model, _ = load(work / ("dense" if name == "pwlq" else "heads_ltp"))
        model = wrapped(model)
        trimformer.quantize_(model, PWLQConfig(wbits=4, act=ActSpec(bits=8)))
        unseen = trimformer.calibrate(model, calib)
        if unseen:
            raise RuntimeError(f"calibration never reached {unseen[:3]}")
    log.setdefault("build_seconds", {})[name] = round(time.time() - t0, 1)
    trimformer.save(model, work / name, tokenizer, overwrite=True)
    return model.eval()


def file_bytes(folder: Path) -> int:
    return (folder / "model.safetensors").stat().st_size


def forward_of(model):
    """A timing variant: the bare transformers forward for float models without token pruning, else the engine."""
    if isinstance(model, TokenPrunedModel):
        model.mode = "packed"
        return lambda batch: model(**batch).logits
    return lambda batch: model(**transformers_inputs(batch)).logits


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/structured_minilm", help="folder for the stage checkpoints")
    p.add_argument("--out", default="benchmarks/results/structured_minilm_rt", help="output prefix (no extension)")
    p.add_argument("--target", type=float, default=0.7, help="heads+MLP FLOPs target")
    p.add_argument("--criterion", default="norm", choices=("norm", "taylor"))
    p.add_argument("--ltp-target", type=float, default=0.6, help="LTP FLOPs target (of its input model's FLOPs)")
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--recovery-steps", type=int, default=60)
    p.add_argument("--ltp-steps", type=int, default=40, help="LTP soft and hard steps each")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--train-examples", type=int, default=2400)
    p.add_argument("--eval-examples", type=int, default=1000)
    p.add_argument("--time-batches", type=int, default=6, help="batches of 32 timed (and 8x as many batch-1 inputs)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work, out = Path(args.work), Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "time_batches", "repeats")}
    stamp = work / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != settings:
        raise SystemExit(f"{work} holds stages built with other settings: choose another --work or delete it")
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings, indent=2))

    train = load_text_data("rotten_tomatoes", "train").subset(args.train_examples, seed=args.seed)
    test = load_text_data("rotten_tomatoes", "test").subset(args.eval_examples, seed=args.seed)
    _, tokenizer, _ = load_model(minilm_path(), label_names=train.label_names)
    log_path = work / "build_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    models = {}
    for name in STAGES:
        if is_checkpoint(work / name):
            models[name], _ = load(work / name)
        else:
            print(f"building {name}", flush=True)
            models[name] = build_stage(name, args, work, train, tokenizer, log)
            atomic_write_json(log_path, log)
        models[name].eval()

    rows = {}
    dense_gflops = None
    for name in STAGES:
        r = evaluate(wrapped(models[name]), test, tokenizer, args.max_length, progress=False)
        dense_gflops = dense_gflops or r.gflops_per_sample
        rows[name] = {"label": LABELS[name], "accuracy": r.accuracy, "gflops": r.gflops_per_sample,
                      "flops_ratio": r.gflops_per_sample / dense_gflops, "predictions": r.predictions,
                      "file_bytes": file_bytes(work / name),
                      "parameters": sum(t.numel() for t in wrapped(models[name]).model.state_dict().values())}
        print(f"{name}: acc {r.accuracy:.2f} flops {rows[name]['flops_ratio']:.3f}", flush=True)

    # the composed model, reloaded: identical predictions?
    reloaded, meta = load(work / "all")
    again = evaluate(wrapped(reloaded), test, tokenizer, args.max_length, progress=False).predictions
    reload_identical = again == rows["all"]["predictions"]
    for row in rows.values():
        row.pop("predictions")

    collate = text_collate(tokenizer, args.max_length)
    speed = {}
    for batch_size, count in ((32, args.time_batches), (1, 8 * args.time_batches)):
        batches = fixed_batches(test, collate, batch_size)[:count]
        variants = {name: forward_of(models[name]) for name in STAGES}
        variants["dense_engine"] = forward_of(wrapped(models["dense"]))  # the same models on trimformer's engine
        variants["heads_engine"] = forward_of(wrapped(models["heads"]))
        timed = time_variants(variants, batches, args.repeats)
        speed[f"batch{batch_size}"] = {name: {"samples_per_s": timed[name]["samples_per_s"],
                                              "latency_ms_median": timed[name]["latency_ms_median"],
                                              "speedup_vs_dense": paired_speedup(timed, name, "dense"),
                                              "speedup_vs_dense_engine": paired_speedup(timed, name, "dense_engine"),
                                              "timing_spread": timing_spread(timed, name, len(batches))}
                                       for name in variants}

    def share(key_of, names=("heads", "heads_ltp", "all")) -> list[dict]:
        steps, previous = [], key_of("dense")
        for name in names:
            value = key_of(name)
            steps.append({"step": LABELS[name], "value_after": value, "change": value - previous})
            previous = value
        return steps

    results = {
        "what": "MiniLM (all-MiniLM-L6-v2) on Rotten Tomatoes: heads+MLP pruning, LTP, PWLQ W4A8, alone and composed",
        "settings": vars(args), "machine": machine_info(), "commit": commit(), "command": " ".join(sys.argv),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "train_examples": len(train), "eval_examples": len(test), "stages": rows, "speed": speed,
        "build": log, "all_reload_identical_predictions": reload_identical,
        "steps_of_the_composed_model": {
            "flops_ratio": share(lambda n: rows[n]["flops_ratio"]),
            "accuracy": share(lambda n: rows[n]["accuracy"]),
            "file_bytes": share(lambda n: rows[n]["file_bytes"]),
            "speedup_batch32": share(lambda n: speed["batch32"][n]["speedup_vs_dense"]),
            "speedup_batch1": share(lambda n: speed["batch1"][n]["speedup_vs_dense"]),
        },
        "notes": ["FLOPs: trimformer's analytic encoder FLOPs (core/flops.py) per sample at the real lengths, relative "
                  "to the dense model; PWLQ changes no FLOPs count (W4A8 multiply-adds counted as float ones)",
                  "speed: every model's forward interleaved batch by batch in this run (dense, heads: transformers' "
                  "own forward; dense_engine, heads_engine: the same models on trimformer's engine; the rest: the "
                  "engine, packed); "
                  "quantized models run simulated (dequantized) kernels, so PWLQ's speed is not an int4/int8 kernel "
                  "speed; timing_spread above 0.10 marks a busy machine (2 cores shared with other jobs)"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), results)
    plot(results, out.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from trimformer.report.plots import save_figure

    rows = results["stages"]
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].scatter([rows[n]["flops_ratio"] for n in names], [rows[n]["accuracy"] for n in names])
    for n in names:
        axes[0].annotate(rows[n]["label"], (rows[n]["flops_ratio"], rows[n]["accuracy"]), fontsize=7)
    axes[0].set(xlabel="encoder FLOPs / dense", ylabel="accuracy (%)", title="accuracy vs FLOPs")
    for ax, key in ((axes[1], "batch32"), (axes[2], "batch1")):
        timed = results["speed"][key]
        order = ["dense", "heads", "dense_engine", "heads_engine", "ltp", "heads_ltp", "pwlq", "all"]
        names_timed = [n for n in order if n in timed][::-1]
        ax.barh([SPEED_LABELS.get(n, LABELS.get(n, n)) for n in names_timed],
                [timed[n]["speedup_vs_dense_engine"] for n in names_timed])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set(xlabel="speed-up vs dense on trimformer's engine (paired median)",
               title=f"{key}, {results['torch_threads']} thread(s)")
    fig.suptitle(results["what"], fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
