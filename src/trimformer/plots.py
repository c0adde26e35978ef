"""PNG plots of accuracy vs GFLOPs, kept tokens per layer and throughput (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trimformer.io_utils import atomic_save_file  # noqa: E402

_COLORS = {"dense": "black", "engine_dense": "dimgray", "ltp": "tab:blue", "topk": "tab:orange", "masked": "tab:gray",
           "packed": "tab:blue"}
_SPEED_LABELS = {"dense": "dense (transformers)", "engine_dense": "dense (trimformer engine)",
                 "packed": "pruned (packed)", "masked": "pruned (masked only)"}


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
    'engine_dense' (trimformer's loop, pruning off), 'packed' and 'masked'. Bars are relative to the faster dense."""
    fig, ax = plt.subplots(figsize=(7, 4))
    variants = [v for v in ("dense", "engine_dense", "packed", "masked") if all(v in r for r in rows)]
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
    ax.legend(fontsize=8)
    return save_figure(fig, path)
