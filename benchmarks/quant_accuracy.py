"""Post-training quantization accuracy: uniform vs PWLQ, with and without bias correction, on real models.

Models (each made by a script in this folder, loaded from runs/):
- ``minilm_rt``: all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (runs/rt/dense, run_text_benchmarks.sh);
- ``vit_fmnist``: DINOv2 ViT-S/14 fine-tuned on Fashion-MNIST at 112 px (runs/fmnist_vit, finetune_vit_fmnist.py);
- ``cnn_fmnist``: a MobileNet-style CNN with batch norm and depthwise convolutions (runs/fmnist_cnn,
  train_fmnist_cnn.py); its batch norms are folded into the convolutions before quantizing.

Every nn.Linear / nn.Conv2d is quantized (weights per output channel, input activations per tensor,
asymmetric, range = the paper's median of the top-10 per calibration batch averaged over batches); the
classifier head (and the CNN's first convolution) keep 8-bit weights, as is usual in PTQ. PWLQ uses the
Gaussian closed-form breakpoint and stores its region bit on top of b ("pwlq-inside": within b; "pwlq-act":
PWLQ activations, whose 4 bits then also get a region bit on top). Each configuration starts from the float
checkpoint; rows already in the results file are kept (``--force`` reruns them). Sizes are the real
bit-packed safetensors files.

Writes benchmarks/results/quant_accuracy.json (+ .png, a table in quant_accuracy.md).
Usage: python benchmarks/quant_accuracy.py [--models minilm_rt,vit_fmnist,cnn_fmnist] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from trimformer.envinfo import machine_info
from trimformer.io_utils import atomic_write_json, atomic_write_text
from trimformer.quant import (
    ActSpec,
    BaseQuantConfig,
    PWLQConfig,
    UniformConfig,
    calibrate,
    config_type,
    fold_batchnorm_,
    quantize_,
    save_packed,
)

ROOT = Path(__file__).resolve().parent.parent
BITS = ((8, 8), (6, 8), (4, 8), (4, 4))


@dataclass
class Task:
    """A float model factory, calibration inputs, an accuracy function and the layers kept at 8 bits."""

    name: str
    label: str
    load: Callable[[], nn.Module]
    calib: list[Any]
    accuracy: Callable[[nn.Module], float]
    eight_bit: dict[str, int]
    details: dict[str, Any]


def text_task(ckpt: Path, calib_texts: int, test_limit: int | None) -> Task:
    from trimformer.checkpoint import load_model
    from trimformer.data.text import load_text_data, unlabelled_batches
    from trimformer.evaluation import evaluate

    _, tokenizer, _ = load_model(str(ckpt))
    train = load_text_data("rotten_tomatoes", "train").subset(calib_texts, seed=0)
    test = load_text_data("rotten_tomatoes", "test").subset(test_limit, seed=0)

    def load() -> nn.Module:
        return load_model(str(ckpt))[0]

    def accuracy(model: nn.Module) -> float:
        return evaluate(model, test, tokenizer, 128, progress=False).accuracy

    return Task("minilm_rt", "MiniLM-L6 / Rotten Tomatoes", load, unlabelled_batches(train, tokenizer, 32, 128),
                accuracy, {"model.classifier": 8}, {"checkpoint": str(ckpt), "test_examples": len(test),
                                                     "calibration_texts": len(train), "max_length": 128})


def image_batches(images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [images[i:i + batch] for i in range(0, len(images), batch)]


def image_accuracy(batches: list[torch.Tensor], labels: torch.Tensor, logits_of: Callable) -> Callable:
    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        model.eval()
        preds = torch.cat([logits_of(model, b).argmax(-1) for b in batches])
        return 100.0 * float((preds == labels).float().mean())

    return accuracy


def vit_task(ckpt: Path, calib_images: int, test_limit: int) -> Task:
    from trimformer.checkpoint import load as load_checkpoint
    from trimformer.data.images import FashionMNIST

    _, meta = load_checkpoint(ckpt)
    res = int(meta["resolution"])
    test_set, train_set = FashionMNIST("test", res), FashionMNIST("train", res)
    g = torch.Generator().manual_seed(0)
    test_idx = torch.randperm(len(test_set), generator=g)[:test_limit].sort().values
    calib_idx = torch.randperm(len(train_set), generator=g)[:calib_images].sort().values
    x_test = torch.stack([test_set[int(i)][0] for i in test_idx])
    y_test = torch.stack([test_set[int(i)][1] for i in test_idx])
    x_cal = torch.stack([train_set[int(i)][0] for i in calib_idx])

    def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x).logits

    return Task("vit_fmnist", f"DINOv2 ViT-S/14 / Fashion-MNIST {res}px", lambda: load_checkpoint(ckpt)[0],
                [{"pixel_values": b} for b in image_batches(x_cal, 32)],
                image_accuracy(image_batches(x_test, 100), y_test, logits), {"classifier": 8},
                {"checkpoint": str(ckpt), "resolution": res, "test_examples": len(y_test),
                 "test_subset": "seeded random (seed 0) from the 10k test set", "calibration_images": len(x_cal)})


def cnn_task(ckpt: Path, calib_images: int) -> Task:
    from trimformer.checkpoint import load as load_checkpoint
    from trimformer.data.images import load_fashion_mnist
    from trimformer.vision.cnn import prepare_images

    model, _ = load_checkpoint(ckpt)
    cfg = model.config
    x_train, _ = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    calib = prepare_images(x_train[torch.randperm(len(x_train), generator=g)[:calib_images]], cfg)

    def load() -> nn.Module:
        m = load_checkpoint(ckpt)[0].eval()
        fold_batchnorm_(m)
        return m

    return Task("cnn_fmnist", "MobileNet-style CNN (BN folded) / Fashion-MNIST 28px", load, image_batches(calib, 64),
                image_accuracy(image_batches(prepare_images(x_test, cfg), 1000), y_test.to(torch.int64),
                               lambda m, x: m(x)),
                {"stem.0": 8, "classifier": 8},
                {"checkpoint": str(ckpt), "test_examples": len(y_test), "calibration_images": len(calib),
                 "bn_folded": True})


def configs() -> list[tuple[str, BaseQuantConfig]]:
    out = []
    a8, a4_pwlq = ActSpec(bits=8), ActSpec(bits=4, scheme="pwlq")
    for wbits, abits in BITS:
        for scheme in ("uniform", "pwlq"):
            for bc in (False, True):
                out.append((f"{scheme}{' +BC' if bc else ''} W{wbits}A{abits}",
                            config_type(scheme)(wbits=wbits, act=ActSpec(bits=abits), bias_correction=bc)))
    out.append(("uniform-mse +BC W4A8", UniformConfig(wbits=4, act=a8, weight_clip="mse")))
    out.append(("uniform pow2 +BC W4A8", UniformConfig(wbits=4, act=a8, pow2_scale=True)))
    out.append(("pwlq pow2 +BC W4A8", PWLQConfig(wbits=4, act=a8, pow2_scale=True)))
    out.append(("pwlq search +BC W4A8", PWLQConfig(wbits=4, act=a8, breakpoint="search")))
    out.append(("pwlq +BC W4A4 pwlq-act", PWLQConfig(wbits=4, act=a4_pwlq)))
    out.append(("pwlq-inside +BC W4A4 pwlq-act",
                PWLQConfig(wbits=4, act=replace(a4_pwlq, region_bit="inside"), region_bit="inside")))
    return out


def fp32_file_bytes(model: nn.Module) -> int:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        state = {k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.clone()
                 for k, v in model.state_dict().items()}
        save_file(state, f"{d}/m.safetensors")
        return Path(f"{d}/m.safetensors").stat().st_size


def run_task(task: Task, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Float accuracy and every configuration; rows already in ``previous`` are kept, not rerun."""
    t0 = time.perf_counter()
    done = {r["config"]: r for r in (previous or {}).get("results", [])}
    float_model = task.load()
    fp = task.accuracy(float_model)
    fp_bytes = fp32_file_bytes(float_model)
    del float_model
    print(f"[{task.name}] float accuracy {fp:.2f}%", flush=True)
    rows = []
    for label, cfg in tqdm(configs(), desc=task.name):
        if label in done and previous and previous["accuracy_fp"] == fp:
            rows.append(done[label])
            continue
        cfg = replace(cfg, layer_wbits=dict(task.eight_bit))
        model = task.load()
        quantize_(model, cfg)
        unseen = calibrate(model, task.calib)
        if unseen:
            raise RuntimeError(f"{task.name}: calibration never reached {unseen[:3]}")
        acc = task.accuracy(model)
        with tempfile.TemporaryDirectory() as d:
            save_packed(model, f"{d}/q.safetensors")
            size = Path(f"{d}/q.safetensors").stat().st_size
        rows.append({"config": label, "scheme": cfg.scheme, "wbits": cfg.wbits,
                     "abits": None if cfg.act is None else cfg.act.bits,
                     "bias_correction": cfg.bias_correction, "pow2_scale": cfg.pow2_scale,
                     "breakpoint": getattr(cfg, "breakpoint", None), "weight_clip": getattr(cfg, "weight_clip", None),
                     "accuracy": acc,
                     "delta_vs_fp": acc - fp, "size_bytes": size, "size_ratio_vs_fp32": size / fp_bytes,
                     "quant_config": cfg.to_dict()})
        tqdm.write(f"[{task.name}] {label:24s} {acc:6.2f}%  ({acc - fp:+.2f})  {size / 1e6:.2f} MB")
    return {"name": task.name, "label": task.label, "accuracy_fp": fp, "size_bytes_fp32": fp_bytes,
            "details": task.details, "results": rows, "wall_seconds": round(time.perf_counter() - t0, 1)}


def acc_of(task: dict, label: str) -> float:
    return next(r["accuracy"] for r in task["results"] if r["config"] == label)


def checks(task: dict) -> dict[str, Any]:
    pwlq, uni = acc_of(task, "pwlq +BC W4A8"), acc_of(task, "uniform +BC W4A8")
    return {"pwlq_bc_w4a8_within_1.5_of_fp": task["accuracy_fp"] - pwlq <= 1.5,
            "pwlq_bc_w4a8_ahead_of_uniform_w4a8": pwlq > max(uni, acc_of(task, "uniform W4A8"))}


def table(tasks: list[dict]) -> str:
    lines = ["| config | " + " | ".join(t["label"] for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    lines.append("| float | " + " | ".join(f"{t['accuracy_fp']:.2f}" for t in tasks) + " |")
    for label, _ in configs():
        cells = [f"{acc_of(t, label):.2f} ({acc_of(t, label) - t['accuracy_fp']:+.2f})" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| checkpoint size | " + " | ".join(t["label"] for t in tasks) + " |",
              "|---|" + "---|" * len(tasks),
              "| fp32 | " + " | ".join(f"{t['size_bytes_fp32'] / 1e6:.2f} MB" for t in tasks) + " |"]
    for label in ("pwlq +BC W8A8", "pwlq +BC W6A8", "pwlq +BC W4A8", "uniform +BC W4A8"):
        cells = []
        for t in tasks:
            r = next(r for r in t["results"] if r["config"] == label)
            cells.append(f"{r['size_bytes'] / 1e6:.2f} MB ({r['size_ratio_vs_fp32']:.3f}x)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(tasks: list[dict], path: Path) -> None:
    from trimformer.report.plots import plt, save_figure

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    names = [f"W{w}A{a}" for w, a in BITS]
    for ax, t in zip(axes[0], tasks, strict=True):
        for i, (scheme, bc, color) in enumerate((("uniform", False, "C0"), ("uniform", True, "C9"),
                                                 ("pwlq", False, "C3"), ("pwlq", True, "C1"))):
            ys = [acc_of(t, f"{scheme}{' +BC' if bc else ''} W{w}A{a}") for w, a in BITS]
            ax.bar([x + 0.2 * (i - 1.5) for x in range(len(BITS))], ys, 0.2, color=color,
                   label=f"{scheme}{' +BC' if bc else ''}")
        ax.axhline(t["accuracy_fp"], color="k", lw=1, ls="--", label="float")
        ax.set_xticks(range(len(BITS)))
        ax.set_xticklabels(names)
        lo = min(min(r["accuracy"] for r in t["results"]), t["accuracy_fp"] - 5)
        ax.set_ylim(max(0, lo - 2), min(100, t["accuracy_fp"] + 3))
        ax.set_title(t["label"], fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm_rt,vit_fmnist,cnn_fmnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text-ckpt", default=str(ROOT / "runs/rt/dense"))
    ap.add_argument("--vit-ckpt", default=str(ROOT / "runs/fmnist_vit"))
    ap.add_argument("--cnn-ckpt", default=str(ROOT / "runs/fmnist_cnn"))
    ap.add_argument("--vit-test", type=int, default=1000, help="ViT test images (seeded subset)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--force", action="store_true", help="rerun configurations already in the results file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    result_file = out / "quant_accuracy.json"
    previous = json.loads(result_file.read_text())["tasks"] if result_file.exists() else []
    done = {t["name"]: t for t in previous}
    makers = {"minilm_rt": lambda: text_task(Path(args.text_ckpt), 512, None),
              "vit_fmnist": lambda: vit_task(Path(args.vit_ckpt), 256, args.vit_test),
              "cnn_fmnist": lambda: cnn_task(Path(args.cnn_ckpt), 1024)}
    for name in args.models.split(","):
        if name not in makers:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(makers)}")
        task = run_task(makers[name](), None if args.force else done.get(name))
        task["checks"] = checks(task)
        done[name] = task
        tasks = [done[n] for n in makers if n in done]
        result = {"benchmark": "quant_accuracy",
                  "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": {**machine_info(), "threads": args.threads},
                  "settings": {"weights": "per output channel; PWLQ Gaussian breakpoint, region bit stored on top",
                               "activations": "input of every quantized layer, per tensor, asymmetric, "
                                              "top-10 median range averaged over calibration batches",
                               "eight_bit_layers": "classifier head (+ CNN stem conv) weights at 8 bits",
                               "bias_correction": "data-free per channel (mean/std of the float weights)"},
                  "tasks": tasks}
        atomic_write_json(result_file, result)
        atomic_write_text(out / "quant_accuracy.md", table(tasks))
        plot(tasks, out / "quant_accuracy.png")


if __name__ == "__main__":
    main()
