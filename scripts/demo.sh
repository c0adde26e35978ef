#!/usr/bin/env bash
# Set up (if needed) and run the offline demo; extra arguments go to `trimformer demo`.
# The demo's own per-stage wall and CPU times are in OUT/results.json ("stages", "total") and OUT/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
echo "[demo.sh] set-up: $(( $(date +%s) - start )) s"
exec .venv/bin/trimformer demo "$@"
