#!/usr/bin/env bash
# Run the test suite on CPU. Extra arguments go to pytest.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOUBLEWIN_NEEDS="pytest advertorch" source "$ROOT/script/env.sh"
cd "$ROOT"
exec "$DOUBLEWIN_PY" -m pytest "$@"  # no file or folder named: the whole suite (pyproject.toml's testpaths)
