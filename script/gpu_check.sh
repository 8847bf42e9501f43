#!/usr/bin/env bash
# GPU acceptance check (DOUBLEWIN_PY=/path/to/python: that interpreter; else .venv, made on first use): the CUDA tests, a short ResNet-50 A-IMP run at 224 px (bf16)
# on fabricated images, a short transfer through the device pipeline, bench.py at 224 px; one verdict per item.
#   bash script/gpu_check.sh        # at most ~10 minutes on one GPU; appends bench.py's GPU row to BENCHMARKS.md
# Without CUDA it says so in one line and exits 0. Flags: see python -m benchmarks.gpu_check --help.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOUBLEWIN_NEEDS=pytest source "$ROOT/script/env.sh"  # the CUDA tests run under pytest
cd "$ROOT"
exec "$DOUBLEWIN_PY" -u -m benchmarks.gpu_check "$@"
