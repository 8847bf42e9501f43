#!/usr/bin/env bash
# The whole pipeline on built-in data, offline, on a CPU (creates .venv on first use). Flags: see python -m demo.run --help.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/script/env.sh"
cd "$ROOT"
exec "$DOUBLEWIN_PY" -u -m demo.run "$@"
