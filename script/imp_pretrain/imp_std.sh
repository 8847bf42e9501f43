#!/usr/bin/env bash
# IMP (standard training) on ImageNet with the paper's hyperparameters: `--recipe imp_std` of main_imp_std.py (lottery/recipes.py
# holds its values; main_imp_std.py --help lists them). Flags after the three positionals override the recipe
# (argparse keeps the last value), e.g.  bash script/imp_pretrain/imp_std.sh W SAVE DATA --epochs 60 -b 256
# Re-running the same command resumes the run in SAVE_DIR.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
usage() {
  echo "usage: bash script/imp_pretrain/imp_std.sh INIT_WEIGHTS SAVE_DIR DATA_DIR [extra flags override the recipe's values]" >&2
  echo "error: $1" >&2
  exit 2
}
[ "$#" -ge 3 ] || usage "expected 3 positional arguments, got $#"
names=(INIT_WEIGHTS SAVE_DIR DATA_DIR)
for i in 1 2 3; do [ -n "${!i}" ] || usage "${names[i-1]} (argument $i) is empty"; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/script/env.sh"
exec "$DOUBLEWIN_PY" -u "$ROOT/main_imp_std.py" --recipe imp_std --init "$1" --save_dir "$2" "$3" "${@:4}"
