"""Time of one inference linear: PyTorch's ``F.linear`` against oneDNN on prepacked weights, per row count.

The weight shapes of MiniLM / DINOv2 ViT-S (hidden 384, MLP 1536) and of the ViT-Ti-shaped model (hidden 192,
MLP 768): stacked query/key/value, output projection, MLP in, MLP out. Both kernels alternate within each
repetition; the median of the repetitions is reported. Run on an otherwise idle machine.

Writes benchmarks/results/linear_kernel.json and .png.
Usage: python benchmarks/linear_kernel.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trimformer.engine import onednn
from trimformer.engine.linears import Linears, WeightCache, tensor_stamp
from trimformer.envinfo import machine_info
from trimformer.io_utils import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
ROWS = (1, 8, 16, 32, 64, 128, 256, 1024, 4096)
MODELS = {"hidden 384 (MiniLM, ViT-S)": (384, 1536), "hidden 192 (ViT-Ti)": (192, 768)}


def shapes(hidden: int, mlp: int) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear of a block."""
    return {"qkv": (hidden, 3 * hidden), "attn_out": (hidden, hidden), "mlp_in": (hidden, mlp),
            "mlp_out": (mlp, hidden)}


def per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e6 * (time.perf_counter() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args()
    if not onednn.AVAILABLE:
        raise SystemExit("this PyTorch build has no prepacked oneDNN linear: nothing to compare")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows_out = []
    with torch.no_grad():
        for model, (hidden, mlp) in MODELS.items():
            for layer, (d_in, d_out) in shapes(hidden, mlp).items():
                weight, bias = torch.randn(d_out, d_in) / d_in**0.5, torch.randn(d_out)
                owner = torch.nn.Linear(1, 1)  # a cache key
                stamp = tensor_stamp(weight, bias)
                for n in ROWS:
                    x = torch.randn(1, n, d_in)
                    calls = max(20, 20_000 // n)
                    plain = functools.partial(F.linear, x, weight, bias)
                    onednn_linear = Linears("onednn", WeightCache()).stacked
                    prepacked = functools.partial(onednn_linear, x, weight, bias, owner, stamp)
                    prepacked()  # pack once, outside the timing
                    times = {"torch": [], "onednn": []}
                    for _ in range(args.repeats):
                        times["torch"].append(per_call_us(plain, calls))
                        times["onednn"].append(per_call_us(prepacked, calls))
                    error = (prepacked() - plain()).abs().max().item()
                    t_torch, t_onednn = statistics.median(times["torch"]), statistics.median(times["onednn"])
                    rows_out.append({"model": model, "layer": layer, "in": d_in, "out": d_out, "rows": n,
                                     "torch_us": t_torch, "onednn_us": t_onednn, "time_ratio": t_onednn / t_torch,
                                     "max_abs_difference": error})
                    print(f"{model:26s} {layer:8s} rows {n:4d}: F.linear {t_torch:8.1f} us, oneDNN prepacked "
                          f"{t_onednn:8.1f} us ({t_onednn / t_torch:.2f})", flush=True)
    out = Path(args.out_dir)
    atomic_write_json(out / "linear_kernel.json", {
        "benchmark": "linear_kernel", "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "threads": args.threads},
        "settings": {"repeats": args.repeats, "rows": list(ROWS), "dtype": "float32"}, "rows": rows_out})
    plot(rows_out, out / "linear_kernel.png")


def plot(rows: list[dict], path: Path) -> None:
    from trimformer.report.plots import plt, save_figure

    fig, axes = plt.subplots(1, len(MODELS), figsize=(5 * len(MODELS), 3.8), squeeze=False)
    for ax, model in zip(axes[0], MODELS, strict=True):
        for layer in ("qkv", "attn_out", "mlp_in", "mlp_out"):
            mine = [r for r in rows if r["model"] == model and r["layer"] == layer]
            ax.plot([r["rows"] for r in mine], [r["time_ratio"] for r in mine], "o-", label=layer, markersize=4)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows (tokens x batch)")
        ax.set_ylabel("oneDNN prepacked time / F.linear time")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
