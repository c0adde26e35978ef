"""How close batch-1 pruning comes to the best it could do on this machine.

For each input, the pruned model is run once to learn how many tokens enter (n_in) and leave (n_out) every
block. An *oracle* forward then runs the same blocks at exactly those counts with no pruning machinery at all:
fused attention from n_out queries over n_in keys, then the output projection and MLP on those n_out (no
attention map for scores, no scoring, no selection, no gathers). Its time is what the pruned model would take
if deciding which tokens to drop were free; dense / oracle is the batch-1 speed-up that such a model would
reach. For the text model (LTP) a second oracle, *oracle_explicit*, also computes what LTP's scores cannot do
without: the whole [H, n_in, n_in] attention map of every block (its softmax needs every logit) and its column
sums, and takes the kept rows' context from that map. It is the bound for an LTP forward written with PyTorch's
operations (a fused kernel that returned column sums would do better; PyTorch has none). All of them (dense
run of the engine, pruned, oracles) are timed interleaved, input by input, median of the repetitions.

Writes benchmarks/results/batch1_bound.json.
Usage: python benchmarks/batch1_bound.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import torch

from trimformer.bench import time_variants
from trimformer.checkpoint import load_model, load_pruned
from trimformer.data.images import load_image_data, pixel_batches
from trimformer.data.text import load_text_data, unlabelled_batches
from trimformer.engine.attention import scaled_qkv
from trimformer.engine.block import attention_branch, mlp_residual
from trimformer.engine.linears import Linears, WeightCache
from trimformer.envinfo import machine_info
from trimformer.io_utils import atomic_write_json
from trimformer.loading import model_resolution
from trimformer.pruned import TokenPrunedModel

ROOT = Path(__file__).resolve().parent.parent
_ORACLE_WEIGHTS = WeightCache()  # the oracle's own packed weights, built on its first call


def oracle_forward(model: TokenPrunedModel, batch: dict, n_in: list[int], n_out: list[int],
                   explicit: bool = False) -> torch.Tensor:
    """Blocks at the given token counts with fused attention and no pruning operations; one input (batch 1).
    ``explicit``: the whole attention map and its column sums instead (what LTP's scores need)."""
    inputs = {k: batch.get(k) for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
    x, alive = model.adapter.embed(model.model, inputs)  # [1, N, D]
    linears = Linears(model.execution.linear_kernel, _ORACLE_WEIGHTS)
    for block, tokens_in, tokens_out in zip(model.adapter.blocks(model.model), n_in, n_out, strict=True):
        x = x[:, :tokens_in]
        h = block.norm_attn(x) if block.pre_norm else x
        q, k, v = scaled_qkv(block, h, linears)  # [1, H, n_in, Dh]
        if explicit:
            probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # [1, H, n_in, n_in]
            probs.sum(dim=(1, 2))  # LTP's column sums (the decision that would read them is left out)
            context = probs[:, :, :tokens_out] @ v  # [1, H, n_out, Dh]
        else:
            context = torch.nn.functional.scaled_dot_product_attention(q[:, :, :tokens_out], k, v, scale=1.0)
        context = context.transpose(1, 2).reshape(1, tokens_out, -1)  # [1, n_out, D]
        x = mlp_residual(block, attention_branch(block, x[:, :tokens_out], context, linears), linears)
    return model.adapter.head(model.model, x, alive[:, : x.shape[1]])["logits"]


def measure(model: TokenPrunedModel, batches: list[dict], repeats: int, explicit_oracle: bool = False) -> dict:
    counts = []
    with torch.inference_mode():
        for batch in batches:
            out = model(**batch)
            counts.append(([int(c) for c in out.n_in[0].tolist()], [int(c) for c in out.n_out[0].tolist()]))
    index = {id(b): i for i, b in enumerate(batches)}

    def dense(batch: dict) -> object:
        with model.pruning_disabled():
            return model(**batch).logits

    def oracle(explicit: bool) -> Callable[[dict], object]:
        return lambda batch: oracle_forward(model, batch, *counts[index[id(batch)]], explicit=explicit)

    variants = {"engine_dense": dense, "pruned": lambda b: model(**b).logits, "oracle": oracle(False)}
    if explicit_oracle:
        variants["oracle_explicit"] = oracle(True)
    speed = time_variants(variants, batches, repeats)
    dense_ms = speed["engine_dense"]["latency_ms_median"]
    return {"latency_ms": {k: v["latency_ms_median"] for k, v in speed.items()},
            **{f"{k}_latency_speedup": dense_ms / v["latency_ms_median"]
               for k, v in speed.items() if k != "engine_dense"},
            "mean_tokens_in_per_block": [sum(c[0][i] for c in counts) / len(counts) for i in range(len(counts[0][0]))],
            "inputs": len(batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", default=str(ROOT / "runs/ng/ltp_0.5"))
    ap.add_argument("--vision", default=str(ROOT / "runs/vit_ti_vision/sait"))
    ap.add_argument("--vision-level", type=float, default=0.45)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/batch1_bound.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}

    model, tokenizer, _ = load_model(args.text)
    model.eval()
    docs = load_text_data("20newsgroups", "test", None).subset(64, seed=0)
    results["text"] = {"checkpoint": args.text, "data": "20newsgroups", "max_length": 128,
                       **measure(model, unlabelled_batches(docs, tokenizer, 1, 128), args.repeats,
                                 explicit_oracle=True)}

    sait, meta = load_pruned(args.vision)
    sait.eval()
    sait.policy.set_level(args.vision_level)
    images = load_image_data("fashion_mnist", "test", model_resolution(sait, meta), limit=48, seed=3)
    results["vision"] = {"checkpoint": args.vision, "level": args.vision_level,
                         **measure(sait, [{"pixel_values": p} for p, _ in pixel_batches(images, 1)], args.repeats)}
    for name, r in results.items():
        speedups = ", ".join(f"{k.removesuffix('_latency_speedup')} {v:.2f}x" for k, v in r.items()
                             if k.endswith("_latency_speedup"))
        print(f"{name}: latency {json.dumps({k: round(v, 2) for k, v in r['latency_ms'].items()})}; {speedups}")
    atomic_write_json(args.out, {"benchmark": "batch1_bound",
                                 "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                 "machine": {**machine_info(), "threads": args.threads},
                                 "settings": {"repeats": args.repeats}, "results": results})


if __name__ == "__main__":
    main()
