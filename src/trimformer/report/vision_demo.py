"""``trimformer demo --task vision``: the sparsity dial of one SaiT checkpoint, offline, in a few minutes.

A small ViT is trained from scratch on Fashion-MNIST (28 px, 4 px patches: 49 tokens + [CLS]), SaiT is
trained on it (dense and sparse passes with shared weights, distillation), and the ONE resulting checkpoint
is evaluated and timed at several sparsity levels, dense included. Writes DIR/report.md, DIR/results.json,
PNGs and the checkpoint in DIR/model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTForImageClassification, get_cosine_schedule_with_warmup

from trimformer.bench import speed_variants, speedups, time_variants
from trimformer.checkpoint import load_pruned, save_pruned
from trimformer.data.images import FASHION_MNIST_CLASSES, grayscale_batch_to_inputs, load_fashion_mnist, pixel_batches
from trimformer.envinfo import machine_info
from trimformer.evaluation import evaluate
from trimformer.fitting import fit
from trimformer.io_utils import atomic_write_json, atomic_write_text
from trimformer.methods import SaiTConfig
from trimformer.pruning import prune
from trimformer.report.plots import kept_histogram, kept_patch_masks, kept_patches, sparsity_dial
from trimformer.train.loop import TrainConfig

RESOLUTION = 28
TOPK_LEVELS = (None, 0.7, 0.5, 0.35)
MASS_LEVEL = 0.9


@dataclass
class VisionDemoSettings:
    train_images: int = 60000
    epochs: int = 2
    sait_steps: int = 80
    eval_images: int = 2000
    bench_images: int = 256
    bench_repeats: int = 3

    @classmethod
    def fast(cls) -> VisionDemoSettings:
        return cls(train_images=512, epochs=1, sait_steps=4, eval_images=256, bench_images=64, bench_repeats=1)


def tiny_vit(hidden_size: int = 96, num_layers: int = 6, num_heads: int = 3,
             patch_size: int = 4) -> ViTForImageClassification:
    """A small ViT (default hidden 96, 6 blocks, 3 heads, 4 px patches; MLP 4x hidden) for 28 px Fashion-MNIST,
    random init. ``patch_size=2`` gives 196 patch tokens, the token count of ViT-Ti/16 at 224 px."""
    if RESOLUTION % patch_size:
        raise ValueError(f"patch_size must divide the {RESOLUTION} px image size, got {patch_size}")
    config = ViTConfig(image_size=RESOLUTION, patch_size=patch_size, hidden_size=hidden_size,
                       num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       num_labels=10, id2label=dict(enumerate(FASHION_MNIST_CLASSES)),
                       label2id={n: i for i, n in enumerate(FASHION_MNIST_CLASSES)})
    return ViTForImageClassification(config)


def train_from_scratch(model: ViTForImageClassification, data, epochs: int, seed: int = 0,
                       device: str | torch.device = "cpu") -> None:
    """Plain supervised training (AdamW 1e-3, warmup + cosine, batch 128) on ``device``; the model stays there."""
    batches = [(p.to(device), y.to(device)) for p, y in pixel_batches(data, 128)]
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, len(batches) * epochs // 10, len(batches) * epochs)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        for i in tqdm(torch.randperm(len(batches), generator=gen).tolist(), desc=f"ViT epoch {epoch + 1}/{epochs}"):
            pixels, labels = batches[i]
            loss = F.cross_entropy(model(pixel_values=pixels).logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def run_vision_demo(out: Path, fast: bool = False, seed: int = 0) -> dict:
    """Train the small ViT and its SaiT model, evaluate and time the dial, write the report."""
    start = time.time()
    settings = VisionDemoSettings.fast() if fast else VisionDemoSettings()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    idx = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:settings.train_images]
    train = TensorDataset(grayscale_batch_to_inputs(train_x[idx], RESOLUTION), train_y[idx].long())
    test_idx = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(1))[:settings.eval_images]
    test_idx = test_idx.sort().values
    test_all = TensorDataset(grayscale_batch_to_inputs(test_x, RESOLUTION), test_y.long())
    test = pixel_batches(Subset(test_all, test_idx.tolist()), 100)

    print(f"[demo] training a small ViT from scratch on {len(train)} Fashion-MNIST images")
    vit = tiny_vit()
    train_from_scratch(vit, train, settings.epochs, seed)
    print(f"[demo] training SaiT ({settings.sait_steps} steps of dense and sparse passes, shared weights)")
    sait = prune(vit, SaiTConfig(policy="topk", steps=settings.sait_steps))
    fit(sait, train, TrainConfig(batch_size=64, lr=5e-4, seed=seed))
    save_pruned(sait, out / "model", extra={"resolution": RESOLUTION, "label_names": list(FASHION_MNIST_CLASSES)},
                overwrite=True)
    sait, _ = load_pruned(out / "model")

    timed = [{"pixel_values": p} for p, _ in pixel_batches(Subset(test_all, list(range(settings.bench_images))), 64)]
    dial = []
    for level in TOPK_LEVELS:
        sait.policy.set_level(level)
        ev = evaluate(sait, test, progress=False)
        speed = time_variants(speed_variants(sait, masked=False), timed, settings.bench_repeats)
        ratios = speedups(speed)
        dial.append({"label": "dense" if level is None else f"keep {level}", "level": level, "accuracy": ev.accuracy,
                     "flops_ratio": ev.flops_ratio, "kept_tokens_per_layer": ev.kept_tokens_per_layer,
                     "speedup": ratios["speedup"], "dense_baseline": ratios["dense_baseline"],
                     "samples_per_s": speed["packed"]["samples_per_s"],
                     "dense_samples_per_s": ratios["dense_samples_per_s"]})
        print(f"[demo] {dial[-1]['label']:9s} accuracy {ev.accuracy:.2f}%  FLOPs {ev.flops_ratio:.2f}  "
              f"speed-up {dial[-1]['speedup']:.2f}x")
    mass = prune(sait.model, SaiTConfig(policy="mass"))
    with mass.policy.at_level(MASS_LEVEL):
        mass_eval = evaluate(mass, test, progress=False)
    stage = mass.policy.stages[0]
    per_image = [kept[stage] - 1 for kept in mass_eval.kept_per_example]
    pixels = test[0][0][:8]
    kept_patches(pixels, kept_patch_masks(mass, pixels, MASS_LEVEL),
                 [FASHION_MNIST_CLASSES[int(y)] for y in test[0][1][:8]], out / "kept_patches.png",
                 f"SaiT mass {MASS_LEVEL}: patches pruned at block {stage} in red")
    kept_histogram({f"mass {MASS_LEVEL}": per_image}, 49, out / "kept_histogram.png",
                   "Input-adaptive SaiT: kept tokens per image")
    sparsity_dial(dial, out / "sparsity_dial.png", "One SaiT checkpoint at several levels (batch 64)")
    results = {"task": "vision", "model": "ViT (hidden 96, 6 blocks) from scratch", "data": "fashion_mnist",
               "train_images": len(train), "eval_images": settings.eval_images, "dial": dial,
               "mass": {"level": MASS_LEVEL, "accuracy": mass_eval.accuracy, "flops_ratio": mass_eval.flops_ratio,
                        "kept_min": min(per_image), "kept_max": max(per_image)},
               "fast": fast, "machine": machine_info(), "seconds": round(time.time() - start, 1)}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", render_vision_report(results))
    print(f"[demo] done in {results['seconds']:.0f} s: report in {out / 'report.md'}")
    return results


def render_vision_report(r: dict) -> str:
    """The vision demo's markdown report."""
    rows = "\n".join(f"| {d['label']} | {d['accuracy']:.2f} | {d['flops_ratio']:.2f} | {d['samples_per_s']:.0f} | "
                     f"{d['speedup']:.2f}x |" for d in r["dial"])
    m = r["mass"]
    return f"""# trimformer demo: one SaiT checkpoint, many sparsities (Fashion-MNIST, small ViT)

Offline run on {r['machine']['cpu']} ({r['machine']['torch_threads']} torch threads). A ViT (hidden 96, 6
blocks, 49 patch tokens) trained from scratch on {r['train_images']} Fashion-MNIST images, then SaiT
(pruning after block 2, dense and sparse passes with shared weights, logit and token-selection
distillation). Evaluated on {r['eval_images']} test images; speed timed at batch 64, interleaved, against the
same weights run dense, by transformers and by trimformer's engine with pruning off (which shares the pruned
model's linear kernels); the speed-up counts against the faster of the two.
{'**Fast smoke-test settings: numbers are not meaningful.**' if r['fast'] else ''}

| level (top-K keep rate) | accuracy (%) | FLOPs vs dense | images/s | speed-up |
|---|---|---|---|---|
{rows}

The level is a run-time argument: `trimformer eval model --task vision --level 0.5`. The input-adaptive
policy on the same weights (importance mass {m['level']}) reaches {m['accuracy']:.2f}% at
{m['flops_ratio']:.2f} of the dense FLOPs, keeping between {m['kept_min']:.0f} and {m['kept_max']:.0f} of
the 49 patch tokens depending on the image.

![sparsity dial](sparsity_dial.png)
![kept patches](kept_patches.png)
![kept tokens per image](kept_histogram.png)

Total time {r['seconds']:.0f} s.
"""
