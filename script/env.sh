#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv from requirements*.txt.
# Sourced by the other scripts; prints nothing when the environment is already up to date.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY="$c"; break; fi
  done
fi
if [ -z "$PY" ]; then echo "error: Python 3.11 not found; install it or set PYTHON=/path/to/python3.11" >&2; exit 2; fi
STAMP="$VENV/.requirements.sha"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "== setting up $VENV (first run only; torch is a large package)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
      -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import torch, torchvision, tqdm, matplotlib, scipy, pytest" \
      || { echo "error: installing requirements into $VENV failed (see above)" >&2; exit 2; }
  echo "$WANT" > "$STAMP"
fi
export DOUBLEWIN_PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
