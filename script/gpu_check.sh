#!/usr/bin/env bash
# GPU acceptance check within a 540 s budget: the benchmark (speed, memory, ticket overhead), DDP over NCCL, short
# A-IMP and transfer runs (bf16, fp16), the CUDA tests; one verdict line per item, numbers and verdicts in --out.
#   DOUBLEWIN_PY=$(which python3) bash script/gpu_check.sh --out gpu_check   # the node's own Python and PyTorch
# Without CUDA it says so in one line and exits 0. Flags, order and files: python -m benchmarks.gpu_check --help.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOUBLEWIN_NEEDS=pytest source "$ROOT/script/env.sh"  # the CUDA tests run under pytest
cd "$ROOT"
exec "$DOUBLEWIN_PY" -u -m benchmarks.gpu_check "$@"
