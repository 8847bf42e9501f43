#!/usr/bin/env bash
# The whole pipeline on built-in data, offline, on a CPU. Flags: see python -m demo.run --help.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/script/env.sh"
cd "$ROOT"
exec "$DOUBLEWIN_PY" -u -m demo.run "$@"
