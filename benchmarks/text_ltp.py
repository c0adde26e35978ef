"""Accuracy vs GFLOPs of LTP and the static top-k cascade at several FLOPs targets, vs dense.

Starts from a dense fine-tuned checkpoint (``trimformer finetune``). Each pruned model is saved under
``--work`` (re-used if present, so an interrupted run resumes) and reloaded to check that the saved
model gives identical predictions. Writes ``OUT.json`` and ``OUT_accuracy_vs_gflops.png``,
``OUT_kept_tokens.png``.

    python benchmarks/text_ltp.py --data 20newsgroups --dense runs/ng/dense --work runs/ng \
        --targets 0.7 0.5 0.35 --steps 100 --max-length 128 --eval-examples 3000 \
        --out benchmarks/results/ltp_20newsgroups
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import trimformer
from trimformer.checkpoint import is_pruned_checkpoint, load_model, load_pruned, save_pruned
from trimformer.data.text import TextDataset, load_text_data
from trimformer.envinfo import machine_info
from trimformer.evaluation import evaluate
from trimformer.io_utils import atomic_write_json
from trimformer.methods import LTPConfig, TopKConfig
from trimformer.pruning import prune
from trimformer.report import plots
from trimformer.train.loop import TrainConfig


def train_method(method: str, target: float, args, train, tokenizer, folder: Path) -> dict:
    dense, _, _ = load_model(args.dense)
    config = TrainConfig(batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed)
    if method == "ltp":
        cfg = LTPConfig(target_flops=target, soft_steps=args.steps, hard_steps=args.steps)
        model = prune(dense.model, cfg)
        history = trimformer.fit(model, train, config, tokenizer=tokenizer)
    else:
        cfg = TopKConfig(target_flops=target, hard_steps=args.steps)
        model = prune(dense.model, cfg)
        history = trimformer.fit(model, train, config, tokenizer=tokenizer)
    summary = {k: v for k, v in history.items() if k not in ("soft", "hard")}
    save_pruned(model, folder, tokenizer, extra={"recipe": {"base_model": args.dense, "data": args.data,
                                                            "train": config.to_dict(), **summary}},
                overwrite=True)  # a rerun replaces its own checkpoint
    return {"model": model, "summary": summary}


def _previous_results(path: Path, settings: dict) -> dict | None:
    """Results of an earlier run with the same settings (their runs are reused, not recomputed)."""
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    same = {k: v for k, v in previous.get("settings", {}).items() if k != "targets"}
    return previous if same == {k: v for k, v in settings.items() if k != "targets"} else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="20newsgroups")
    p.add_argument("--dense", required=True, help="dense fine-tuned checkpoint")
    p.add_argument("--work", required=True, help="folder for the pruned checkpoints")
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.35])
    p.add_argument("--methods", nargs="+", default=["ltp", "topk"])
    p.add_argument("--steps", type=int, default=100, help="steps per training stage")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--train-examples", type=int, default=None)
    p.add_argument("--eval-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where evaluation runs: cpu or cuda (training follows Accelerate)")
    p.add_argument("--out", required=True, help="output path prefix (no extension)")
    args = p.parse_args()
    torch.manual_seed(args.seed)

    dense, tokenizer, _ = load_model(args.dense)
    dense.to(args.device)
    train = load_text_data(args.data, "train").subset(args.train_examples, seed=args.seed)
    test = load_text_data(args.data, "test").subset(args.eval_examples, seed=args.seed)
    out = Path(args.out)
    previous = _previous_results(out.with_suffix(".json"), vars(args))
    results = {"data": args.data, "settings": vars(args), "machine": machine_info(), "train_examples": len(train),
               "eval_examples": len(test), "runs": []}
    start = time.time()
    if previous is not None:
        results["dense"] = previous["dense"]
    else:
        res = evaluate(dense, test, tokenizer, args.max_length)
        results["dense"] = {"method": "dense", "accuracy": res.accuracy, "gflops": res.gflops_per_sample,
                            "flops_ratio": 1.0, "mean_length": res.mean_length}
    done = {(r["method"], r["target_flops"]): r for r in (previous or {}).get("runs", [])}
    kept_series = {}
    for target in args.targets:
        for method in args.methods:
            folder = Path(args.work) / f"{method}_{target:g}"
            if (method, target) in done and is_pruned_checkpoint(folder):  # finished in an earlier run
                results["runs"].append(done[(method, target)])
                kept_series[f"{method} {target:g}"] = done[(method, target)]["kept_tokens_per_layer"]
                continue
            t0 = time.time()
            if is_pruned_checkpoint(folder):
                model, meta = load_pruned(folder)
                model.to(args.device)
                summary = {k: v for k, v in meta.get("recipe", {}).items() if k not in ("train", "base_model")}
            else:
                trained = train_method(method, target, args, train, tokenizer, folder)
                model, summary = trained["model"], trained["summary"]
            model.eval()
            model.mode = "packed"
            r = evaluate(model, test, tokenizer, args.max_length)
            # Consistency checks on the first 500 test texts: reloaded checkpoint, masked execution.
            head = TextDataset(test.texts[:500], test.labels[:500], test.label_names, test.name)
            reloaded, _ = load_pruned(folder)
            reloaded.to(args.device)
            reload_preds = evaluate(reloaded, head, tokenizer, args.max_length, progress=False).predictions
            model.mode = "masked"
            masked_preds = evaluate(model, head, tokenizer, args.max_length, progress=False).predictions
            agree = sum(a == b for a, b in zip(masked_preds, r.predictions, strict=False)) / len(head)
            run = {"method": method, "target_flops": target, "accuracy": r.accuracy, "gflops": r.gflops_per_sample,
                   "flops_ratio": r.flops_ratio, "kept_tokens_per_layer": r.kept_tokens_per_layer,
                   "reload_identical_predictions": reload_preds == r.predictions[:len(head)],
                   "masked_vs_packed_agreement": agree, "checked_examples": len(head),
                   "checkpoint": str(folder), "seconds": round(time.time() - t0, 1), **summary}
            results["runs"].append(run)
            kept_series[f"{method} {target:g}"] = r.kept_tokens_per_layer
            print(f"{method} target {target}: acc {r.accuracy:.2f} (dense {results['dense']['accuracy']:.2f}), "
                  f"flops {r.flops_ratio:.3f}, {run['seconds']} s", flush=True)
            results["seconds"] = round(time.time() - start, 1)
            atomic_write_json(out.with_suffix(".json"), results)

    points = [results["dense"]] + results["runs"]
    plots.accuracy_vs_gflops(points, out.parent / f"{out.name}_accuracy_vs_gflops.png",
                             f"{args.data}, MiniLM, max length {args.max_length}")
    plots.kept_tokens_per_layer(kept_series, out.parent / f"{out.name}_kept_tokens.png",
                                f"{args.data}: tokens kept per layer", mean_length=results["dense"]["mean_length"])


if __name__ == "__main__":
    main()
