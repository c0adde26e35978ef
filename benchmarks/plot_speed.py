"""Plot throughput bars from ``trimformer bench --json`` files.

    python benchmarks/plot_speed.py OUT.png TITLE bench_b32.json bench_b1.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trimformer.report import plots


def main() -> None:
    out, title, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    rows = []
    for f in files:
        r = json.loads(Path(f).read_text())
        rows.append({"label": f"batch {r['batch_size']}", "dense": r["transformers_dense_samples_per_s"],
                     "engine_dense": r["engine_dense_samples_per_s"], "packed": r["pruned_samples_per_s"],
                     "masked": r["masked_samples_per_s"]})
    plots.throughput_bars(rows, out, title)


if __name__ == "__main__":
    main()
