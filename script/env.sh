#!/usr/bin/env bash
# The interpreter every script runs, exported as DOUBLEWIN_PY. Sourced by the other scripts; silent when ready.
#   DOUBLEWIN_PY=/path/to/python bash script/X.sh   # use that Python and its packages as they are: no venv, nothing
#                                                   # installed; a missing dependency is named in one line with the
#                                                   # command that adds it (torch and torchvision are never touched)
#   bash script/X.sh                                # .venv from the exact pins of requirements*.txt, made on first use
#                                                   # by Python 3.10-3.13 (PYTHON=/path/to/python3.x picks which)
# A script that needs packages of requirements-test.txt names them in DOUBLEWIN_NEEDS before sourcing this file.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# Optional runtime packages: only the feature that imports them needs them (--autoattack, sweep.py run --slurm)
OPTIONAL="pyautoattack submitit"

# The distributions that `$1` lacks, as one line: requirements.txt's but torch, torchvision and $OPTIONAL, and
# requirements-test.txt's named in DOUBLEWIN_NEEDS.
missing_line() {
  "$1" - "$OPTIONAL" "${DOUBLEWIN_NEEDS:-}" "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" <<'PYEOF'
import importlib.metadata as md, re, shlex, sys
optional, needs, want, lack = set(sys.argv[1].split()), set(sys.argv[2].split()), [], []
for path, runtime in ((sys.argv[3], True), (sys.argv[4], False)):
    for line in open(path):
        spec, _, marker = line.split("#")[0].strip().partition(";")
        m = re.match(r"python_version\s*<\s*['\"](\d+)\.(\d+)['\"]", marker.strip())
        if not spec or (m and sys.version_info[:2] >= (int(m[1]), int(m[2]))):
            continue
        name = re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0]
        if name in ("torch", "torchvision") or (name in optional if runtime else name not in needs):
            continue
        try:
            md.version(name)
        except md.PackageNotFoundError:
            want.append(spec.replace(" ", "")), lack.append(name)
if lack:
    py = shlex.quote(sys.executable)
    print(f"error: {sys.executable} lacks {', '.join(lack)}: add {'it' if len(lack) == 1 else 'them'} with  {py} -m pip "
          f"install {' '.join(shlex.quote(w) for w in want)}  (offline: pip download the same on a machine with "
          f"network for this Python, copy the wheels, then add --no-index --find-links WHEEL_DIR); "
          "torch and torchvision stay as they are")
PYEOF
}

if [ -n "${DOUBLEWIN_PY:-}" ]; then
  PY_FOUND="$(command -v "$DOUBLEWIN_PY" 2>/dev/null)" \
    || { echo "error: DOUBLEWIN_PY=$DOUBLEWIN_PY is not an executable: give the path of a Python 3.10+" >&2; exit 2; }
  "$PY_FOUND" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' 2>/dev/null \
    || { echo "error: DOUBLEWIN_PY=$DOUBLEWIN_PY is not Python 3.10 or newer" >&2; exit 2; }
  # found, not imported: importing torch takes seconds, and every run of a driver passes here
  "$PY_FOUND" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("torch") and u.find_spec("torchvision")))' \
      2>/dev/null || { echo "error: DOUBLEWIN_PY=$DOUBLEWIN_PY cannot import" \
    "torch and torchvision: install the PyTorch build for your machine (README: Supported versions), or unset" \
    "DOUBLEWIN_PY to use .venv" >&2; exit 2; }
  LACK="$(missing_line "$PY_FOUND")"
  [ -z "$LACK" ] || { echo "$LACK" >&2; exit 2; }
  export DOUBLEWIN_PY="$PY_FOUND"
else
  STAMP="$VENV/.requirements.sha"
  WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    in_range='import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))'
    PY="${PYTHON:-}"
    if [ -n "$PY" ]; then
      "$PY" -c "$in_range" 2>/dev/null || { echo "error: PYTHON=$PY is not Python 3.10-3.13: point PYTHON at one" \
        "(or set DOUBLEWIN_PY=/path/to/python to use an interpreter that already has PyTorch)" >&2; exit 2; }
    else
      for c in python3.12 python3.11 python3.13 python3.10 python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c "$in_range" 2>/dev/null; then PY="$c"; break; fi
      done
      [ -n "$PY" ] || { echo "error: no Python 3.10-3.13 found to make $VENV: install one, set" \
        "PYTHON=/path/to/python3.x, or set DOUBLEWIN_PY=/path/to/python to use an interpreter that has PyTorch" >&2
        exit 2; }
    fi
    echo "== setting up $VENV with $("$PY" -c 'import sys; print(sys.version.split()[0])') (first run only;" \
      "torch is a large package)" >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$VENV/bin/python" -c "import torch, torchvision, tqdm, matplotlib, scipy, pytest" \
        || { echo "error: installing requirements into $VENV failed (see above)" >&2; exit 2; }
    echo "$WANT" > "$STAMP"
  fi
  export DOUBLEWIN_PY="$VENV/bin/python"
  export PATH="$VENV/bin:$PATH"
fi
