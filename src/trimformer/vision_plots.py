"""Pictures of vision token pruning: kept patches over the images, kept-token histograms, the sparsity dial."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from trimformer.plots import plt, save_figure
from trimformer.pruned import TokenPrunedModel


@torch.no_grad()
def kept_patch_masks(model: TokenPrunedModel, pixels: torch.Tensor, level: float | None) -> torch.Tensor:
    """bool [B, P] patches kept at the first SaiT stage (masked mode keeps the original positions)."""
    policy = model.policy
    previous = model.mode
    model.mode = "masked"
    try:
        with policy.at_level(level), policy.capture() as cap:
            model(pixel_values=pixels)
    finally:
        model.mode = previous
    prefix = model.adapter.num_prefix_tokens(model.model)
    return cap.records[0].keep[:, prefix:].cpu()


def kept_patches(images: torch.Tensor, keeps: torch.Tensor, titles: Sequence[str], path: str | Path,
                 title: str) -> Path:
    """Each image above, the same with its pruned patches tinted red below; kept / total per image."""
    n = images.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    grid = int(keeps.shape[1] ** 0.5)
    for i in range(n):
        img = images[i, 0]
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)  # [H, W] in [0, 1]
        mask = keeps[i].reshape(grid, grid).float()
        mask = mask.repeat_interleave(img.shape[0] // grid, 0).repeat_interleave(img.shape[1] // grid, 1)
        rgb = img[..., None].repeat(1, 1, 3)
        red = torch.tensor([0.85, 0.1, 0.1])
        rgb = torch.where(mask[..., None] > 0, rgb, 0.35 * rgb + 0.65 * red)
        axes[0, i].imshow(img.numpy(), cmap="gray")
        axes[1, i].imshow(rgb.clamp(0, 1).numpy())
        axes[0, i].set_title(titles[i], fontsize=7)
        axes[1, i].set_title(f"{int(keeps[i].sum())}/{keeps.shape[1]}", fontsize=8)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def kept_histogram(counts: dict[str, Sequence[float]], total: int, path: str | Path, title: str) -> Path:
    """Histogram of per-image kept patch tokens, one series per setting."""
    fig, ax = plt.subplots(figsize=(7, 4))
    step = max(1, total // 32)
    for label, values in counts.items():
        ax.hist(list(values), bins=range(0, total + step + 1, step), alpha=0.6, label=label)
    ax.set_xlabel(f"patch tokens kept after the pruning block (of {total})")
    ax.set_ylabel("test images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def sparsity_dial(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Accuracy and measured speed-up of one SaiT checkpoint against its level (rows: level, accuracy,
    flops_ratio, speedup)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["flops_ratio"] for r in rows]
    ax.plot(xs, [r["accuracy"] for r in rows], "o-", color="tab:blue", label="accuracy")
    for r in rows:
        ax.annotate(r["label"], (r["flops_ratio"], r["accuracy"]), fontsize=7, textcoords="offset points",
                    xytext=(3, 4))
    ax.set_xlabel("FLOPs vs dense")
    ax.set_ylabel("accuracy (%)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["speedup"] for r in rows], "s--", color="tab:orange", label="speed-up")
    ax2.set_ylabel("measured speed-up vs dense", color="tab:orange")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
