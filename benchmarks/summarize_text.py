"""Markdown tables of the committed text results (accuracy vs FLOPs, measured speed).

    python benchmarks/summarize_text.py > benchmarks/results/text_summary.md
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def accuracy_table(name: str) -> str:
    data = json.loads((RESULTS / f"ltp_{name}.json").read_text())
    dense = data["dense"]
    rows = [f"**{name}** ({data['eval_examples']} test texts, max length {data['settings']['max_length']}, "
            f"mean {dense['mean_length']:.1f} tokens)", "",
            "| method | FLOPs target | FLOPs vs dense | GFLOPs / sample | accuracy (%) | vs dense (points) |",
            "|---|---|---|---|---|---|",
            f"| dense | - | 1.000 | {dense['gflops']:.3f} | {dense['accuracy']:.2f} | - |"]
    for run in sorted(data["runs"], key=lambda r: (-r["target_flops"], r["method"])):
        rows.append(f"| {run['method']} | {run['target_flops']:.2f} | {run['flops_ratio']:.3f} | {run['gflops']:.3f} "
                    f"| {run['accuracy']:.2f} | {run['accuracy'] - dense['accuracy']:+.2f} |")
    return "\n".join(rows)


def speed_table(name: str) -> str:
    rows = ["| batch | dense (transformers) samples/s | dense (trimformer engine) samples/s | LTP packed samples/s "
            "| LTP masked-only samples/s | speed-up (packed vs faster dense) | FLOPs vs dense "
            "| speed-up / FLOPs reduction | median latency faster dense / packed (ms) | latency speed-up "
            "| packed vs transformers |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for batch in (32, 1):
        path = RESULTS / f"bench_{name}_b{batch}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        lat = r["latency_ms"]
        dense_latency = min(lat["dense"], lat["engine_dense"])
        rows.append(f"| {batch} | {r['transformers_dense_samples_per_s']:.1f} | "
                    f"{r['engine_dense_samples_per_s']:.1f} | {r['pruned_samples_per_s']:.1f} | "
                    f"{r['masked_samples_per_s']:.1f} | {r['speedup']:.2f}x | "
                    f"{r['flops_ratio']:.3f} | {r['speedup_over_flops_reduction']:.2f} | {dense_latency:.1f} / "
                    f"{lat['packed']:.1f} | {r['latency_speedup']:.2f}x | {r['speedup_vs_transformers']:.2f}x |")
    return "\n".join(rows)


def main() -> None:
    for name in ("20newsgroups", "20newsgroups_256", "rotten_tomatoes"):
        if (RESULTS / f"ltp_{name}.json").is_file():
            print(accuracy_table(name), "\n")
            print(speed_table(name), "\n")


if __name__ == "__main__":
    main()
