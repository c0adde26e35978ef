"""Reconstruction PTQ on transformers: the fine-tuned DINOv2 ViT-S/14 (Fashion-MNIST, 168 px; ``--model vit``) and
MiniLM fine-tuned on Rotten Tomatoes (``--model minilm``) at W4A8 and W4A4, with the schemes of
quant_reconstruction.py (round-to-nearest, PWLQ+BC, AdaRound, BRECQ, BRECQ with the Fisher loss, per-layer
power-of-two, RAPQ, PWLQ+AdaRound): where reconstruction helps on transformers and where it does not.

The ViT is the SaiT checkpoint run dense (its policy off: the fine-tuned ViT's own computation; trained on a lent GPU
by benchmarks/gpu/issue17_gpu.sh). As for the CNNs, the patch embedding and the classifier keep 8-bit weights and the
image input 8 bits (MiniLM: the classifier); every other Linear is quantized (weights per output channel, input
activations per tensor, MSE-clipped). Calibration: ``--calib-images`` seeded training examples; accuracy on a
seeded ``--test-images`` subset of the test split. Calibration seconds are wall time on the row's ``device``
(load averages recorded with each row); ``--device cuda`` runs on a GPU in float32 with TF32 off.

Writes benchmarks/results/quant_transformers.json (+ .png); rows already there are kept (``--force`` reruns).
Usage: python benchmarks/quant_transformers.py [--model vit|minilm] [--schemes rtn,brecq,rapq] [--bits 4/8,4/4]
       [--results FILE: one file per model when two runs go at once] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_reconstruction import SCHEMES, add_run_options, pending_rows  # noqa: E402

import trimformer  # noqa: E402
from trimformer.data.batching import calibration_batches, sample_indices  # noqa: E402
from trimformer.data.images import image_collate, load_image_data  # noqa: E402
from trimformer.envinfo import machine_info  # noqa: E402
from trimformer.io_utils import atomic_write_json  # noqa: E402
from trimformer.pruned import TokenPrunedModel  # noqa: E402
from trimformer.quant import ActSpec, save_packed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quant_transformers.json"


def edge_layers(model: nn.Module) -> tuple[str | None, str]:
    """Names of the first convolution (a ViT's patch embedding; None for text) and the last Linear (the
    classifier) of ``model``."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (convs[0] if convs else None), linears[-1]


def common(model: nn.Module, wbits: int, abits: int) -> dict[str, Any]:
    stem, head = edge_layers(model)
    edges = {head: 8} if stem is None else {stem: 8, head: 8}
    return {"wbits": wbits, "act": ActSpec(bits=abits, clip="mse"), "layer_wbits": edges,
            "layer_abits": {} if stem is None else {stem: 8}}


def minilm_setup(args: argparse.Namespace) -> tuple[TokenPrunedModel, Callable, list[dict], dict[str, Any]]:
    """MiniLM fine-tuned on Rotten Tomatoes as structured_transformer.py's dense stage (2,400 snippets, 150 steps,
    batch 16, 64 tokens; saved under ``--work`` and reused), an evaluator on a seeded test subset, calibration."""
    from trimformer.assets import minilm_path
    from trimformer.checkpoint import is_checkpoint, load_model
    from trimformer.data.text import load_text_data, text_collate, transformers_inputs
    from trimformer.train.finetune import finetune_config, finetune_dense

    train = load_text_data("rotten_tomatoes", "train").subset(2400, seed=0)
    test = load_text_data("rotten_tomatoes", "test").subset(args.test_images, seed=0)
    folder = Path(args.work) / "minilm_rt"
    if is_checkpoint(folder):
        model, tokenizer, _ = load_model(folder)
    else:
        model, tokenizer, _ = load_model(minilm_path(), label_names=train.label_names, seed=0)
        cfg = finetune_config("text", batch_size=16, max_length=64, seed=0)
        finetune_dense(model.model, train, text_collate(tokenizer, 64), cfg, steps=150)
        trimformer.save(model, folder, tokenizer, overwrite=True)
    model = TokenPrunedModel(model.model if isinstance(model, TokenPrunedModel) else model).eval()
    calib = [transformers_inputs(b) for b in calibration_batches(train, text_collate(tokenizer, 64), 32,
                                                                 max(1, args.calib_images // 32))]
    calib = [{k: v.to(args.device) for k, v in b.items()} for b in calib]

    def score(m: TokenPrunedModel) -> float:
        return trimformer.evaluate(m, test, tokenizer, 64, progress=False).accuracy / 100

    return model, score, calib, {"model": "all-MiniLM-L6-v2 fine-tuned on 2,400 Rotten Tomatoes snippets",
                                 "test_examples": len(test), "checkpoint": str(folder)}


def vit_setup(args: argparse.Namespace) -> tuple[TokenPrunedModel, Callable, list[dict], dict[str, Any]]:
    """The SaiT checkpoint run dense, an evaluator on a seeded test subset, calibration images."""
    loaded, meta = trimformer.load(args.checkpoint)
    model = TokenPrunedModel(loaded.model).eval()  # dense: the fine-tuned ViT's own computation
    res = int(meta.get("resolution") or 168)
    test = load_image_data("fashion_mnist", "test", res)
    keep = sample_indices(len(test), args.test_images, seed=0)
    test_batches = [image_collate([test[i] for i in keep[j:j + 50]]) for j in range(0, len(keep), 50)]
    calib = calibration_batches(load_image_data("fashion_mnist", "train", res), image_collate, 32,
                                max(1, args.calib_images // 32))
    calib = [{"pixel_values": b["pixel_values"].to(args.device)} for b in calib]

    def score(m: TokenPrunedModel) -> float:
        return trimformer.evaluate(m, test_batches, progress=False).accuracy / 100

    return model, score, calib, {"test_examples": len(keep), "checkpoint": args.checkpoint}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("vit", "minilm"), default="vit")
    p.add_argument("--checkpoint", default=str(ROOT / "runs/vision168/sait"), help="the ViT (SaiT checkpoint)")
    p.add_argument("--work", default=str(ROOT / "runs/quant_transformers"), help="where MiniLM's fine-tune is kept")
    p.add_argument("--device", default="cpu", help="cpu or cuda (float32, TF32 off)")
    add_run_options(p, "rtn,pwlq_bc,adaround,brecq,brecq_fisher,pow2_layer,rapq,pwlq_adaround", "4/8,4/4", 100, 50,
                    128, 1000, 2, RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    model, score, calib, source = (minilm_setup if args.model == "minilm" else vit_setup)(args)
    model.to(args.device)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = Path(args.results)
    results = json.loads(out.read_text()) if out.is_file() else {"models": {}}
    results.update({"machine": machine_info(), "note": " ".join(__doc__.split("\n\n")[1].split()),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("results", "force")}})
    entry = results["models"].setdefault("dinov2_vits" if args.model == "vit" else "minilm_rt", {"rows": []})
    entry.update({"fp32_accuracy": score(model), "test_images": source["test_examples"],
                  "calib_images": sum(len(next(iter(b.values()))) for b in calib), **source})
    print(f"fp32 {100 * entry['fp32_accuracy']:.2f}%", flush=True)
    for scheme, key, wbits, abits, done in pending_rows(entry, args):
        cfg = SCHEMES[scheme](args, common(model.model, wbits, abits))
        load_before = list(os.getloadavg())
        t0 = time.perf_counter()
        # the bare transformers model: reconstruction hooks its blocks, which trimformer's engine does not call
        q_bare = trimformer.quantize_(copy.deepcopy(model.model), cfg)
        trimformer.calibrate(q_bare, calib)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            nbytes = save_packed(q_bare, Path(tmp) / "q.qsafetensors")
        q = TokenPrunedModel(q_bare).eval()
        row = {"scheme": scheme, "bits": key, "accuracy": score(q), "calib_seconds": seconds, "device": device_name,
               "checkpoint_payload_bytes": nbytes,
               "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
               "quant_config": cfg.to_dict(),
               "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        entry["rows"] = [r for r in entry["rows"] if r not in done] + [row]
        print(f"{key} {scheme}: {100 * row['accuracy']:.2f}% (FP32 {100 * entry['fp32_accuracy']:.2f}%), "
              f"{seconds:.0f} s", flush=True)
        atomic_write_json(out, results)
    from quant_reconstruction import plot

    plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
