"""PNG plots (matplotlib, Agg backend): accuracy vs GFLOPs, kept tokens per layer, throughput; and pictures of
vision token pruning: kept patches over the images, kept-token histograms, the sparsity dial."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from trimformer.io_utils import atomic_save_file  # noqa: E402
from trimformer.pruned import TokenPrunedModel  # noqa: E402

_COLORS = {"dense": "black", "engine_dense": "dimgray", "ltp": "tab:blue", "topk": "tab:orange", "masked": "tab:gray",
           "packed": "tab:blue"}
_SPEED_LABELS = {"dense": "dense (transformers)", "engine_dense": "dense (trimformer engine)",
                 "packed": "pruned (packed)", "masked": "pruned (masked only)", "topk": "top-k baseline (packed)"}


def save_figure(fig, path: str | Path) -> Path:
    """tight_layout, then write the PNG atomically (an interrupted write leaves the old file) and close."""
    fig.tight_layout()
    atomic_save_file(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def accuracy_vs_gflops(points: Sequence[dict], path: str | Path, title: str) -> Path:
    """points: dicts with 'method', 'gflops', 'accuracy' (and optional 'label')."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(p["method"] for p in points):
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["gflops"])
        ax.plot([p["gflops"] for p in pts], [p["accuracy"] for p in pts], "o-" if len(pts) > 1 else "o",
                color=_COLORS.get(method), label=method, markersize=7 if method == "dense" else 5)
    ax.set_xlabel("GFLOPs per sample (encoder, analytic)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def kept_tokens_per_layer(series: dict[str, Sequence[float]], path: str | Path, title: str,
                          mean_length: float | None = None) -> Path:
    """series: label -> mean tokens kept after each layer."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), values, "o-", label=label)
    if mean_length is not None:
        ax.axhline(mean_length, color="black", ls="--", lw=1, label="dense (mean length)")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean tokens kept")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def throughput_bars(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """rows: dicts with 'label' (e.g. 'batch 32') and samples/s for 'dense' (transformers), optionally
    'engine_dense' (trimformer's loop, pruning off), 'packed', 'masked' and 'topk' (a baseline's packed run). Bars
    are relative to the faster dense."""
    fig, ax = plt.subplots(figsize=(7, 4))
    variants = [v for v in ("dense", "engine_dense", "packed", "masked", "topk") if all(v in r for r in rows)]
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(rows))]
        values = [r[variant] / max(r.get("engine_dense", 0.0), r["dense"]) for r in rows]
        bars = ax.bar(xs, values, width, label=_SPEED_LABELS[variant], color=_COLORS[variant])
        for bar, r in zip(bars, rows, strict=True):
            ax.annotate(f"{r[variant]:.0f}/s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows])
    ax.set_ylabel("throughput relative to the faster dense")
    ax.set_title(title)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3)  # below the bars
    return save_figure(fig, path)


@torch.no_grad()
def kept_patch_masks(model: TokenPrunedModel, pixels: torch.Tensor, level: float | None) -> torch.Tensor:
    """bool [B, P] patches kept at the first SaiT stage (masked mode keeps the original positions)."""
    policy = model.policy
    with model.options(mode="masked"), policy.at_level(level), policy.capture() as cap:
        model(pixel_values=pixels)
    prefix = model.adapter.num_prefix_tokens(model.model)
    return cap.records[0].keep[:, prefix:].cpu()


def kept_patches(images: torch.Tensor, keeps: torch.Tensor | dict[str, torch.Tensor], titles: Sequence[str],
                 path: str | Path, title: str) -> Path:
    """Each image on top; below it, one row per setting (``keeps``: bool [B, P], or {row label: bool [B, P]}) with
    the pruned patches tinted red and the kept / total count of each image."""
    rows = keeps if isinstance(keeps, dict) else {"": keeps}
    n = images.shape[0]
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.6 * n, 1.7 * (1 + len(rows))), squeeze=False)
    for i in range(n):
        img = images[i, 0]
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)  # [H, W] in [0, 1]
        axes[0, i].imshow(img.numpy(), cmap="gray")
        axes[0, i].set_title(titles[i], fontsize=7)
        for row, (label, keep) in enumerate(rows.items(), start=1):
            grid = int(keep.shape[1] ** 0.5)
            mask = keep[i].reshape(grid, grid).float()
            mask = mask.repeat_interleave(img.shape[0] // grid, 0).repeat_interleave(img.shape[1] // grid, 1)
            rgb = img[..., None].repeat(1, 1, 3)
            red = torch.tensor([0.85, 0.1, 0.1])
            rgb = torch.where(mask[..., None] > 0, rgb, 0.35 * rgb + 0.65 * red)
            axes[row, i].imshow(rgb.clamp(0, 1).numpy())
            axes[row, i].set_title(f"{label + ': ' if label else ''}{int(keep[i].sum())}/{keep.shape[1]}", fontsize=7)
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
