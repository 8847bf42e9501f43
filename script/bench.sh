#!/usr/bin/env bash
# Speed of our fast paths against the original's way. Flags: see python -m benchmarks.bench --help.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
#   bash script/bench.sh            # CPU: ResNet-50 32 px b64 PGD-3 (~3-5 min); GPU: 224 px, bf16 + channels_last
#   bash script/bench.sh --quick    # smoke configuration
# Appends a dated summary row to BENCHMARKS.md and JSON lines to runs/bench/bench.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/script/env.sh"
cd "$ROOT"
exec "$DOUBLEWIN_PY" -u -m benchmarks.bench "$@"
