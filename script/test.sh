#!/usr/bin/env bash
# Run the test suite on CPU (creates .venv on first use). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/script/env.sh"
cd "$ROOT"
exec "$DOUBLEWIN_PY" -m pytest tests "$@"
