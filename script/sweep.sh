#!/usr/bin/env bash
# The campaign tool (plan / run / status / report / check-data), e.g.
#   bash script/sweep.sh plan campaign/example.toml
#   bash script/sweep.sh run campaign/example.toml --slurm --partition gpu --time 24:00:00 --follow
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/script/env.sh"
exec "$DOUBLEWIN_PY" "$ROOT/sweep.py" "$@"
