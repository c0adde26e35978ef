#!/usr/bin/env bash
# Set up (if needed), lint and run the test suite; exits non-zero on any failure.
# The main suite runs in .venv (CPU torch 2.13.0, no timm: the timm tests skip there). The tests that need timm
# (tests/test_timm*.py) then run in .venv-timm (scripts/setup_timm.sh: torch 2.14.1 + torchvision + timm), where
# TRIMFORMER_REQUIRE_TIMM=1 turns a missing timm into a failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_timm.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest tests "$@"
TRIMFORMER_REQUIRE_TIMM=1 .venv-timm/bin/python -m pytest tests/test_timm*.py
