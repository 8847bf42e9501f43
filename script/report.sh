#!/usr/bin/env bash
# The double-win report of a tree of downstream runs: tables (report.md/.csv/.json) and accuracy-vs-sparsity plots.
#   bash script/report.sh ROOT [--out DIR] [--checkpoint sa|ra|each] [--ra pgd|aa] [--tolerance 0.5] [--group-by KEY,...]
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
ROOT_OF_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: bash script/report.sh ROOT [--out DIR] [--checkpoint sa|ra|each] [--ra pgd|aa] [--tolerance 0.5] [--group-by KEY,...]" >&2
  echo "error: ROOT (argument 1) is $([ $# -lt 1 ] && echo missing || echo empty)" >&2
  exit 2
fi
source "$ROOT_OF_REPO/script/env.sh"
exec "$DOUBLEWIN_PY" "$ROOT_OF_REPO/report.py" "$@"
