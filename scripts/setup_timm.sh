#!/usr/bin/env bash
# Idempotent set-up of the second virtual environment, .venv-timm, that runs the tests needing timm.
# Why a second one: timm needs torchvision, and no torchvision wheel loads with the CPU torch pinned in .venv
# ("operator torchvision::nms does not exist"). Here torch, torchvision and timm are pinned as a set that loads
# together (torch 2.14.1 brings its CUDA libraries: about 5.8 GB, about 2 minutes the first time on the 2-core
# machine), and the project is installed into it in editable mode. A run that finds it all in place takes the
# time of one import of torch (about 5 s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-timm
TORCH=${TRIMFORMER_TIMM_TORCH_VERSION:-2.14.1}
TORCHVISION=${TRIMFORMER_TIMM_TORCHVISION_VERSION:-0.29.1}
TIMM=${TRIMFORMER_TIMM_VERSION:-1.0.31}

env_ok() {  # $1: "stack" (the pinned versions load, torchvision's operators included) or "all" (+ the project)
  "$VENV/bin/python" - "$1" "$TORCH" "$TORCHVISION" "$TIMM" <<'PY' 2>/dev/null
import os, sys
import timm, torch, torchvision
what, *want = sys.argv[1:]
have = [torch.__version__.split("+")[0], torchvision.__version__.split("+")[0], timm.__version__]
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # fails where torchvision does not fit torch
if what == "all":
    import pytest, trimformer  # noqa: F401  the project, installed editable from this checkout
    assert trimformer.__file__.startswith(os.path.abspath("src") + os.sep), trimformer.__file__
sys.exit(0 if have == want else 1)
PY
}

# The project's install is redone when pyproject.toml or the pins change (a stamp holds their hash).
pins="torch==$TORCH torchvision==$TORCHVISION timm==$TIMM"
stamp="$VENV/trimformer-install.stamp"
want=$(printf '%s\n' "$pins" | cat - pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && env_ok all; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_q() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
# The pins go in as constraints to both installs, so the project's own install cannot move torch.
constraints="$VENV/trimformer-pins.txt"
printf '%s\n' $pins > "$constraints"
env_ok stack || pip_q -c "$constraints" $pins
pip_q -c "$constraints" -e ".[dev,timm]"
env_ok all || { echo "error: $VENV does not load torch $TORCH, torchvision $TORCHVISION, timm $TIMM and" \
                     "this checkout's trimformer" >&2; exit 1; }
echo "$want" > "$stamp"
