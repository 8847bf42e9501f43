#!/usr/bin/env bash
# Run the test suite on CPU. Extra arguments go to pytest.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOUBLEWIN_NEEDS="pytest advertorch" source "$ROOT/script/env.sh"
cd "$ROOT"
# Three workers where pytest-xdist is installed (requirements-test.txt), for 2 CPU cores: one of them runs the live
# cluster's tests, which mostly wait on SLURM. A file stays on one worker, all cluster tests on one together, the
# longest groups first (tests/conftest.py); `-n 0` after it runs everything in this one process.
workers=()
if "$DOUBLEWIN_PY" -c "import xdist" 2>/dev/null; then workers=(-n 3 --dist loadgroup --no-loadscope-reorder); fi
exec "$DOUBLEWIN_PY" -m pytest "${workers[@]}" "$@"  # no file named: the whole suite (pyproject.toml testpaths)
