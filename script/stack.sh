#!/usr/bin/env bash
# A virtual environment for one stack of script/stacks.txt, made from the package index under .stacks/NAME (kept
# and reused while the stack's row and requirements*.txt stay the same); prints its Python, for DOUBLEWIN_PY:
#   DOUBLEWIN_PY=$(bash script/stack.sh floor) bash script/test.sh -m "not slow"
# The stack's Python X.Y is found as pythonX.Y on PATH or under pyenv's versions (PYENV_ROOT, else ~/.pyenv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TABLE="$ROOT/script/stacks.txt"
NAMES="$(sed 's/#.*//' "$TABLE" | awk 'NF {print $1}' | paste -sd' ')"
[ "$#" = 1 ] || { echo "usage: bash script/stack.sh NAME  (a stack of script/stacks.txt: $NAMES)" >&2; exit 2; }
ROW="$(sed 's/#.*//' "$TABLE" | awk -v n="$1" 'NF && $1 == n')"
[ -n "$ROW" ] || { echo "error: no stack '$1' in script/stacks.txt (its stacks: $NAMES)" >&2; exit 2; }
read -r NAME PYVER TORCH VISION EXTRA <<<"$ROW"
[ -n "$VISION" ] && [ -z "${EXTRA:-}" ] || { echo "error: script/stacks.txt: the row of '$NAME' is not" \
  "'name python torch torchvision'" >&2; exit 2; }

is_ver() { "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))" 2>/dev/null; }
PY=""
for c in "python$PYVER" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PYVER".*/bin/"python$PYVER"; do
  if command -v "$c" >/dev/null 2>&1 && is_ver "$c"; then PY="$(command -v "$c")"; break; fi
done
[ -n "$PY" ] || { echo "error: stack '$NAME' needs Python $PYVER: none found as python$PYVER on PATH or under" \
  "${PYENV_ROOT:-$HOME/.pyenv}/versions (install one, e.g. pyenv install $PYVER)" >&2; exit 2; }

VENV="$ROOT/.stacks/$NAME"
STAMP="$VENV/.stack.sha"
WANT="$( (echo "$ROW"; cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "== making $VENV: Python $("$PY" -c 'import sys; print(sys.version.split()[0])'), torch $TORCH," \
    "torchvision $VISION" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  OTHERS="$VENV/requirements-others.txt"  # requirements.txt without torch and torchvision, which the row pins
  grep -v -E '^[[:space:]]*(torch|torchvision)[[:space:]]*([=<>!~;#]|$)' "$ROOT/requirements.txt" > "$OTHERS"
  # --no-cache-dir: the wheels (GBs: PyPI's torch is a CUDA build) would stay in pip's cache, a second copy
  LOG="$(mktemp)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir "torch==$TORCH" \
      "torchvision==$VISION" -r "$OTHERS" -r "$ROOT/requirements-test.txt" 2>&1 | grep -v "^WARNING: Location" \
      | tee "$LOG" >&2 || true
  if ! "$VENV/bin/python" - "$TORCH" "$VISION" <<'PYEOF'
import sys, torch, torchvision
got = (torch.__version__.split("+")[0], torchvision.__version__.split("+")[0])
sys.exit(None if got == tuple(sys.argv[1:]) else f"error: got torch {got[0]}, torchvision {got[1]}")
PYEOF
  then
    rm -rf "$VENV"  # half a stack is no stack: the next try starts clean
    if grep -q "No space left on device" "$LOG"; then
      echo "error: installing stack '$NAME' into $VENV ran out of disk: a stack needs about 8 GB free while pip" \
        "makes it (its downloads, then about 5 GB installed); $(df -Ph "$ROOT" | awk 'NR == 2 {print $4}') are" \
        "free there now" >&2
    else
      echo "error: installing stack '$NAME' into $VENV failed (see above)" >&2
    fi
    rm -f "$LOG"; exit 2
  fi
  rm -f "$LOG"
  echo "$WANT" > "$STAMP"
fi
echo "$VENV/bin/python"
