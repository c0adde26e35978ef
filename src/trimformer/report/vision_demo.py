"""``trimformer demo --task vision``: the sparsity dial of one SaiT checkpoint, offline, in a few minutes.

A small ViT is trained from scratch on Fashion-MNIST (28 px, 4 px patches: 49 tokens + [CLS]), SaiT is
trained on it (dense and sparse passes with shared weights, distillation), and the ONE resulting checkpoint
is evaluated and timed at several sparsity levels, dense included. Writes DIR/report.md, DIR/results.json,
PNGs and the checkpoint in DIR/model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTForImageClassification, get_cosine_schedule_with_warmup

from trimformer.bench import fastest_dense, paired_speedup, speed_variants, time_variants, timing_spread
from trimformer.checkpoint import load_pruned, save_pruned
from trimformer.data.images import FASHION_MNIST_CLASSES, grayscale_batch_to_inputs, load_fashion_mnist, pixel_batches
from trimformer.envinfo import machine_info
from trimformer.evaluation import evaluate
from trimformer.fitting import fit
from trimformer.io_utils import atomic_write_json, atomic_write_text
from trimformer.methods import SaiTConfig
from trimformer.pruning import prune
from trimformer.report.plots import kept_histogram, kept_patch_masks, kept_patches, sparsity_dial
from trimformer.report.stages import StageTimer, cpu_share, machine_busy, quietness, stage_table
from trimformer.train.loop import TrainConfig

RESOLUTION = 28
TOPK_LEVELS = (None, 0.7, 0.5, 0.35)
MASS_LEVEL = 0.9
TIMING_STAGE = "time the dial (interleaved)"
CLEAR_POINTS = 10  # keep rates on garment and background closer than this (percentage points) read as no preference


@dataclass
class VisionDemoSettings:
    train_images: int = 40000  # 2 epochs of 40k: the demo's largest stage, sized for the 5-minute budget
    epochs: int = 2
    sait_steps: int = 80
    eval_images: int = 2000
    bench_images: int = 256
    bench_repeats: int = 3

    @classmethod
    def fast(cls) -> VisionDemoSettings:
        return cls(train_images=512, epochs=1, sait_steps=4, eval_images=256, bench_images=64, bench_repeats=2)


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


def object_patches(images: torch.Tensor, patch: int, threshold: int = 26) -> torch.Tensor:
    """bool [N, P]: patches of uint8 images [N, H, W] with a pixel brighter than ``threshold`` (10% of white),
    i.e. on the garment rather than on Fashion-MNIST's black background."""
    n, h, w = images.shape
    tiles = images.reshape(n, h // patch, patch, w // patch, patch).amax(dim=(2, 4))  # [N, H/p, W/p]
    return (tiles > threshold).reshape(n, -1)


def keep_rates(model, batches: list[tuple[torch.Tensor, torch.Tensor]], on_object: torch.Tensor,
               level: float | None) -> dict[str, float]:
    """Share of the garment's patches and of the background's patches that ``model`` keeps at ``level``."""
    keep = torch.cat([kept_patch_masks(model, pixels, level) for pixels, _ in batches])  # [N, P]
    return {"object": float(keep[on_object].float().mean()), "background": float(keep[~on_object].float().mean())}


def _time_dial(sait, timed: list[dict], repeats: int) -> dict:
    """Dense (both runs) and every top-K level of the one checkpoint, interleaved in the same timing loop."""
    base = speed_variants(sait, masked=False)
    variants = {"dense": base["dense"], "engine_dense": base["engine_dense"]}

    def at(level: float):
        def run(batch: dict) -> object:
            with sait.policy.at_level(level), sait.options(mode="packed"):
                return sait(**batch).logits
        return run

    variants.update({f"keep {level}": at(level) for level in TOPK_LEVELS if level is not None})
    speed = time_variants(variants, timed, repeats)
    dense = fastest_dense(speed)
    return {"speed": speed, "dense_baseline": dense, "dense_spread": timing_spread(speed, dense, len(timed)),
            "pairs": len(speed[dense]["seconds"])}


def run_vision_demo(out: Path, fast: bool = False, seed: int = 0) -> dict:
    """Train the small ViT and its SaiT model, evaluate and time the dial, write the report."""
    timer = StageTimer()
    settings = VisionDemoSettings.fast() if fast else VisionDemoSettings()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with timer.stage("load Fashion-MNIST"):
        train_x, train_y = load_fashion_mnist("train")
        test_x, test_y = load_fashion_mnist("test")
        idx = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:settings.train_images]
        train = TensorDataset(grayscale_batch_to_inputs(train_x[idx], RESOLUTION), train_y[idx].long())
        test_idx = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(1))[:settings.eval_images]
        test_idx = test_idx.sort().values
        test_all = TensorDataset(grayscale_batch_to_inputs(test_x, RESOLUTION), test_y.long())
        test = pixel_batches(Subset(test_all, test_idx.tolist()), 100)

    with timer.stage("train the ViT from scratch"):
        print(f"[demo] training a small ViT from scratch on {len(train)} Fashion-MNIST images")
        torch.manual_seed(seed)
        vit = tiny_vit()
        train_from_scratch(vit, train, settings.epochs, seed)
    with timer.stage("train SaiT, save, reload"):
        print(f"[demo] training SaiT ({settings.sait_steps} steps of dense and sparse passes, shared weights)")
        sait = prune(vit, SaiTConfig(policy="topk", steps=settings.sait_steps))
        fit(sait, train, TrainConfig(batch_size=64, lr=5e-4, seed=seed))
        save_pruned(sait, out / "model", extra={"resolution": RESOLUTION,
                                                "label_names": list(FASHION_MNIST_CLASSES)}, overwrite=True)
        sait, _ = load_pruned(out / "model")

    with timer.stage("evaluate the dial"):
        dial = []
        for level in TOPK_LEVELS:
            with sait.policy.at_level(level):
                ev = evaluate(sait, test, progress=False)
            dial.append({"label": "dense" if level is None else f"keep {level}", "level": level,
                         "accuracy": ev.accuracy, "flops_ratio": ev.flops_ratio,
                         "kept_tokens_per_layer": ev.kept_tokens_per_layer})
    with timer.stage(TIMING_STAGE):
        timed = [{"pixel_values": p}
                 for p, _ in pixel_batches(Subset(test_all, list(range(settings.bench_images))), 64)]
        timing = _time_dial(sait, timed, settings.bench_repeats)
        speed, dense_name = timing["speed"], timing["dense_baseline"]
        for row in dial:
            name = dense_name if row["level"] is None else row["label"]
            row.update(speedup=paired_speedup(speed, name, dense_name),
                       samples_per_s=speed[name]["samples_per_s"],
                       dense_samples_per_s=speed[dense_name]["samples_per_s"], dense_baseline=dense_name)
            print(f"[demo] {row['label']:9s} accuracy {row['accuracy']:.2f}%  FLOPs {row['flops_ratio']:.2f}  "
                  f"speed-up {row['speedup']:.2f}x")

    with timer.stage("input-adaptive policy, pictures"):
        mass = prune(sait.model, SaiTConfig(policy="mass"))
        with mass.policy.at_level(MASS_LEVEL):
            mass_eval = evaluate(mass, test, progress=False)
        stage = mass.policy.stages[0]
        per_image = [kept[stage] - 1 for kept in mass_eval.kept_per_example]
        patch = sait.model.config.patch_size
        on_object = object_patches(test_x[test_idx], patch)
        where = {"mass": keep_rates(mass, test, on_object, MASS_LEVEL),
                 **{row["label"]: keep_rates(sait, test, on_object, row["level"]) for row in dial[1:]}}
        pixels = test[0][0][:8]
        shown = {f"mass {MASS_LEVEL}": kept_patch_masks(mass, pixels, MASS_LEVEL),
                 **{f"top-K {level}": kept_patch_masks(sait, pixels, level) for level in TOPK_LEVELS[1:]}}
        kept_patches(pixels, shown, [FASHION_MNIST_CLASSES[int(y)] for y in test[0][1][:8]],
                     out / "kept_patches.png", f"One SaiT checkpoint: patches pruned at block {stage} in red "
                     "(input-adaptive mass policy, then the top-K dial)")
        kept_histogram({f"mass {MASS_LEVEL}": per_image}, on_object.shape[1], out / "kept_histogram.png",
                       "Input-adaptive SaiT: kept tokens per image")
        sparsity_dial(dial, out / "sparsity_dial.png", "One SaiT checkpoint at several levels (batch 64)")
    results = {"task": "vision", "model": "ViT (hidden 96, 6 blocks) from scratch", "data": "fashion_mnist",
               "seed": seed, "train_images": len(train), "eval_images": settings.eval_images, "dial": dial,
               "mass": {"level": MASS_LEVEL, "accuracy": mass_eval.accuracy, "flops_ratio": mass_eval.flops_ratio,
                        "kept_min": min(per_image), "kept_max": max(per_image),
                        "kept_mean": sum(per_image) / len(per_image)},
               "keep_rates": where, "object_share": float(on_object.float().mean()),
               "num_patches": on_object.shape[1], "prune_block": stage,
               "dense_spread": timing["dense_spread"], "pairs": timing["pairs"],
               "bench_repeats": settings.bench_repeats,
               "timing_cpu_share": cpu_share(timer.stages[TIMING_STAGE], torch.get_num_threads()),
               "fast": fast, "machine": machine_info(), "stages": timer.stages}
    results["machine_busy"] = machine_busy(results["dense_spread"], results["timing_cpu_share"])
    results["total"] = timer.total()
    results["seconds"] = results["total"]["wall_s"]
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", render_vision_report(results))
    print(f"[demo] done in {results['seconds']:.0f} s (CPU {results['total']['cpu_s']:.0f} s): report in "
          f"{out / 'report.md'}")
    return results


def _where_it_prunes(r: dict) -> str:
    """Plain words, from the measured keep rates, on where the checkpoint keeps patches: on the garment or not."""
    rates = r["keep_rates"]["mass"]
    obj, bg = 100 * rates["object"], 100 * rates["background"]
    measured = (f"At importance mass {r['mass']['level']}, it keeps {obj:.0f}% of the patches on the garment and "
                f"{bg:.0f}% of the black background patches (the garment covers {100 * r['object_share']:.0f}% of the "
                f"{r['num_patches']} patches of the {r['eval_images']} test images).")
    if obj > bg + CLEAR_POINTS:
        return measured + " It keeps the garment and prunes the background, which is what token pruning is for."
    if abs(obj - bg) <= CLEAR_POINTS:
        return measured + (f" Garment and background are kept at rates within {CLEAR_POINTS} points of each other: "
                           "this checkpoint's ranking barely tells the object from the background.")
    return measured + (
        " **So this small from-scratch ViT prunes inside the garment and keeps background.** SaiT ranks the patches "
        f"by the class token's attention at block {r['prune_block']}, and a ViT trained from scratch for a few "
        "minutes parks much of that attention on the uniform black patches, which carry no information and so are "
        "a safe place for it (this resembles the attention sinks described for ViTs by Darcet et al., "
        "'Vision Transformers Need Registers', 2023). The ranking is therefore not a saliency map here (the mass "
        "policy still scores "
        f"{r['mass']['accuracy']:.2f}% against {r['dial'][0]['accuracy']:.2f}% dense). A pretrained ViT's class "
        "attention does rest on the object: the repo's DINOv2 benchmark (`benchmarks/results/"
        "vision_pruning_168_kept_patches.png`, `docs/results.md`) prunes the background and keeps the garment; "
        "fine-tuning it does not fit this demo's few-minute budget on a 2-core CPU.")


def render_vision_report(r: dict) -> str:
    """The vision demo's markdown report."""
    rows = "\n".join(f"| {d['label']} | {d['accuracy']:.2f} | {d['flops_ratio']:.2f} | {d['samples_per_s']:.0f} | "
                     f"{d['speedup']:.2f}x |" for d in r["dial"])
    m = r["mass"]
    return f"""# trimformer demo: one SaiT checkpoint, many sparsities (Fashion-MNIST, small ViT)

Offline run on {r['machine']['cpu']} ({r['machine']['torch_threads']} torch threads), seed {r['seed']}. A ViT
(hidden 96, 6 blocks, {r['num_patches']} patch tokens) trained from scratch on {r['train_images']} Fashion-MNIST
images, then SaiT (pruning after block {r['prune_block']}, dense and sparse passes with shared weights, logit and
token-selection distillation). Evaluated on {r['eval_images']} test images; every level timed at batch 64 in one
interleaved loop with the same weights run dense, by transformers and by trimformer's engine with pruning off
(which shares the pruned model's linear kernels). Each speed-up is the median over {r['pairs']} back-to-back
(faster dense, level) pairs of one batch ({r['bench_repeats']} repeats).
{'**Fast smoke-test settings: numbers are not meaningful.**' if r['fast'] else ''}

{quietness(r['dense_spread'], r['timing_cpu_share'])}

| level (top-K keep rate) | accuracy (%) | FLOPs vs dense | images/s | speed-up |
|---|---|---|---|---|
{rows}

The level is a run-time argument: `trimformer eval model --task vision --level 0.5`. The input-adaptive
policy on the same weights (importance mass {m['level']}) reaches {m['accuracy']:.2f}% at
{m['flops_ratio']:.2f} of the dense FLOPs, keeping between {m['kept_min']:.0f} and {m['kept_max']:.0f}
(mean {m['kept_mean']:.1f}) of the {r['num_patches']} patch tokens depending on the image.

## Which patches it keeps

{_where_it_prunes(r)}

![sparsity dial](sparsity_dial.png)
![kept patches](kept_patches.png)
![kept tokens per image](kept_histogram.png)

## Time per stage

{stage_table(r['stages'], r['total'])}
"""
