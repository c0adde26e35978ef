"""Accuracy of chosen vision settings on the whole Fashion-MNIST test split (10,000 images), to put numbers
from the 1,000-image subset of vision_pruning.py on firmer ground. Rows are written as they finish.

    python benchmarks/vision_full_test.py --base runs/fmnist_vit168 --sait runs/vision168/sait --tag 168
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import time
from pathlib import Path

import torch

from trimformer.checkpoint import load_pruned
from trimformer.data.images import load_image_data, pixel_batches
from trimformer.envinfo import machine_info
from trimformer.evaluation import evaluate
from trimformer.io_utils import atomic_write_json
from trimformer.loading import load_vision_model, model_resolution
from trimformer.methods import SaiTConfig
from trimformer.pruning import prune

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=str(ROOT / "runs/fmnist_vit168"))
    ap.add_argument("--sait", default=str(ROOT / "runs/vision168/sait"))
    ap.add_argument("--topk-level", type=float, default=0.45)
    ap.add_argument("--mass-level", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="168")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plain, meta = load_vision_model(args.base)
    sait, _ = load_pruned(args.sait)
    mass = prune(sait.model, SaiTConfig(policy="mass", stages=sait.policy.config().stages))
    batches = pixel_batches(load_image_data("fashion_mnist", "test", model_resolution(plain, meta)), 50)
    settings = [("sait", "dense (level None)", sait, None), ("sait-topk", f"keep {args.topk_level}", sait,
                args.topk_level), ("sait-mass", f"mass {args.mass_level}", mass, args.mass_level),
                ("plain", "fine-tuned", plain, None)]
    out = ROOT / "benchmarks" / "results" / f"vision_full_test_{args.tag}.json"
    result = {"benchmark": "vision_full_test", "machine": {**machine_info(), "threads": args.threads},
              "settings": {"base_model": args.base, "sait": args.sait, "test_images": sum(len(y) for _, y in batches)},
              "rows": []}
    for method, setting, model, level in settings:
        t0 = time.perf_counter()
        with model.policy.at_level(level) if method != "plain" else contextlib.nullcontext():
            ev = evaluate(model, batches)
        result["rows"].append({"method": method, "setting": setting, **ev.summary(),
                               "seconds": round(time.perf_counter() - t0, 1)})
        result["created_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(out, result)
        print(f"{method:9s} {setting:18s} acc {ev.accuracy:6.2f}  FLOPs {ev.flops_ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
