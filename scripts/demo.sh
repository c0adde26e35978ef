#!/usr/bin/env bash
# Set up (if needed) and run the offline demo; extra arguments go to `trimformer demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/trimformer demo "$@"
