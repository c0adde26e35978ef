"""Reconstruction PTQ on the Fashion-MNIST CNNs: round-to-nearest, PWLQ+BC, AdaRound, BRECQ (MSE or Fisher-weighted
loss: ``brecq_fisher``), per-layer power-of-two, RAPQ and PWLQ+AdaRound at W8A8, W4A8, W4A4 and W2A4.

Models (train_cnn_zoo.py, loaded from runs/cnn_zoo/): ``resnet`` (ResNet-18-style), ``mobilenetv2``
(MobileNetV2-style) and ``fmnist_cnn`` (the MobileNet-style CNN of trimformer.vision.cnn). Batch norms are folded
first. Weights per output channel; input activations per tensor, asymmetric, MSE-clipped range (the same rule for
every scheme; power-of-two steps for the two power-of-two schemes). As usual in PTQ, the first convolution and the
classifier keep 8-bit weights and the image input of the first convolution 8 bits. Calibration: ``--calib-images``
seeded training images (reconstruction uses all of them). Accuracy on the first ``--test-images`` test images.
Calibration seconds are wall time of quantize_ + calibrate on a CPU that other jobs share (load averages recorded
with each row): they are inflated and only comparable within a run. Checkpoint bytes: the bit-packed file's payload.

Writes benchmarks/results/quant_reconstruction.json (+ .png); rows already there are kept (``--force`` reruns).
Usage: python benchmarks/quant_reconstruction.py [--models resnet,mobilenetv2,fmnist_cnn] [--bits 4/4,2/4]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from train_cnn_zoo import accuracy, fmnist_tensors, load_trained

from trimformer.envinfo import machine_info
from trimformer.io_utils import atomic_write_json
from trimformer.quant import (
    ActSpec,
    AdaRoundConfig,
    BaseQuantConfig,
    BRECQConfig,
    PWLQAdaRoundConfig,
    PWLQConfig,
    RAPQConfig,
    UniformConfig,
    calibrate,
    fold_batchnorm_,
    quantize_,
    save_packed,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quant_reconstruction.json"
NOTE = " ".join(__doc__.split("\n\n")[1].split())  # the paragraph on models, settings, timing and load
EDGE_LAYERS = {"stem.0": 8, "classifier": 8}  # first conv and classifier: 8-bit weights


def pow2_act(act: ActSpec) -> ActSpec:
    return ActSpec(**{**act.to_dict(), "pow2": True})


def recon(args: argparse.Namespace) -> dict[str, Any]:
    return {"iters": args.iters, "calib_samples": args.calib_images, "batch_size": 32}


SCHEMES: dict[str, Callable[[argparse.Namespace, dict[str, Any]], BaseQuantConfig]] = {
    "rtn": lambda a, c: UniformConfig(**c, weight_clip="mse", bias_correction=False),
    "pwlq_bc": lambda a, c: PWLQConfig(**c, bias_correction=True),
    "adaround": lambda a, c: AdaRoundConfig(**c, **recon(a)),
    "brecq": lambda a, c: BRECQConfig(**c, **recon(a)),
    "brecq_fisher": lambda a, c: BRECQConfig(**c, **recon(a), recon_loss="fisher"),
    "pow2_layer": lambda a, c: UniformConfig(**{**c, "act": pow2_act(c["act"])}, weight_clip="mse",
                                             bias_correction=False, pow2_scale=True),
    "rapq": lambda a, c: RAPQConfig(**c, **recon(a), exp_iters=a.exp_iters),
    "pwlq_adaround": lambda a, c: PWLQAdaRoundConfig(**c, **recon(a)),
}


def common(wbits: int, abits: int) -> dict[str, Any]:
    return {"wbits": wbits, "act": ActSpec(bits=abits, clip="mse"), "layer_wbits": dict(EDGE_LAYERS),
            "layer_abits": {"stem.0": 8}}


def run_row(model: nn.Module, cfg: BaseQuantConfig, calib: list[torch.Tensor], x: torch.Tensor,
            y: torch.Tensor) -> dict[str, Any]:
    load_before = list(os.getloadavg())
    t0 = time.perf_counter()
    q = quantize_(copy.deepcopy(model), cfg)
    calibrate(q, calib)
    seconds = time.perf_counter() - t0
    acc = accuracy(q, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        nbytes = save_packed(q, Path(tmp) / "q.qsafetensors")
        file_bytes = (Path(tmp) / "q.qsafetensors").stat().st_size
    return {"accuracy": acc, "calib_seconds": seconds, "checkpoint_payload_bytes": nbytes,
            "checkpoint_file_bytes": file_bytes, "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
            "quant_config": cfg.to_dict()}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        entry = results["models"][name]
        rows = entry["rows"]
        bit_keys = [b for b in ("W8A8", "W4A8", "W4A4", "W2A4") if any(r["bits"] == b for r in rows)]
        schemes = [s for s in SCHEMES if any(r["scheme"] == s for r in rows)]
        width = 0.8 / max(1, len(schemes))
        for i, s in enumerate(schemes):
            vals = [next((100 * r["accuracy"] for r in rows if r["scheme"] == s and r["bits"] == b), 0.0)
                    for b in bit_keys]
            ax.bar([j + i * width for j in range(len(bit_keys))], vals, width, label=s)
        ax.axhline(100 * entry["fp32_accuracy"], color="k", ls="--", lw=1, label="FP32")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(bit_keys))], bit_keys)
        ax.set_ylim(0, 100)
        ax.set_title(f"{name} (FP32 {100 * entry['fp32_accuracy']:.1f}%)")
        ax.set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_run_options(p: argparse.ArgumentParser, schemes: str, bits: str, iters: int, exp_iters: int, calib: int,
                    test: int, threads: int, results: Path) -> None:
    """The options every reconstruction benchmark shares (this one and quant_transformers.py), with its defaults."""
    p.add_argument("--schemes", default=schemes)
    p.add_argument("--bits", default=bits, help="W/A pairs, in the order to run")
    p.add_argument("--iters", type=int, default=iters, help="reconstruction steps per unit")
    p.add_argument("--exp-iters", type=int, default=exp_iters, help="RAPQ's network-wide exponent steps")
    p.add_argument("--calib-images", type=int, default=calib)
    p.add_argument("--test-images", type=int, default=test)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--results", default=str(results))
    p.add_argument("--force", action="store_true", help="rerun rows already in the results")


def pending_rows(entry: dict[str, Any], args: argparse.Namespace) -> Iterator[tuple[str, str, int, int, list]]:
    """(scheme, "WxAy", wbits, abits, the rows it replaces) of every row to run, in ``--bits`` then ``--schemes``
    order; rows already in ``entry`` are skipped unless ``--force``."""
    for bits in args.bits.split(","):
        wbits, abits = (int(b) for b in bits.split("/"))
        key = f"W{wbits}A{abits}"
        for scheme in args.schemes.split(","):
            done = [r for r in entry["rows"] if r["scheme"] == scheme and r["bits"] == key]
            if not done or args.force:
                yield scheme, key, wbits, abits, done


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet,mobilenetv2,fmnist_cnn")
    add_run_options(p, ",".join(SCHEMES), "4/4,2/4,4/8,8/8", 300, 100, 256, 5000, 1, RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.results)
    results = json.loads(out.read_text()) if out.is_file() else {"models": {}}
    results.update({"machine": machine_info(), "note": NOTE,
                    "settings": {k: v for k, v in vars(args).items() if k not in ("results", "force")}})
    x, y = fmnist_tensors("test", args.test_images)
    xt, _ = fmnist_tensors("train")
    pick = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))[: args.calib_images]
    calib = list(xt[pick].split(32))
    for name in args.models.split(","):
        model = load_trained(name)
        fold_batchnorm_(model)
        entry = results["models"].setdefault(name, {"rows": []})
        entry.update({"fp32_accuracy": accuracy(model, x, y), "test_images": len(x),
                      "calib_images": args.calib_images})
        for scheme, key, wbits, abits, done in pending_rows(entry, args):
            cfg = SCHEMES[scheme](args, common(wbits, abits))
            row = {"scheme": scheme, "bits": key, **run_row(model, cfg, calib, x, y),
                   "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            entry["rows"] = [r for r in entry["rows"] if r not in done] + [row]
            print(f"{name} {key} {scheme}: {100 * row['accuracy']:.2f}% "
                  f"(FP32 {100 * entry['fp32_accuracy']:.2f}%), {row['calib_seconds']:.0f} s", flush=True)
            if out.is_file():  # another process may have added rows for other models meanwhile
                others = json.loads(out.read_text())["models"]
                results["models"] = {**others, name: entry}
            atomic_write_json(out, results)
    plot(results, out.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
