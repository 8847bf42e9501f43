#!/usr/bin/env bash
# Standard transfer of a ticket with the original's hyperparameters: `--recipe std` of main_train_downstream.py
# (transfer/recipes.py holds its values; main_train_downstream.py --help lists them). Flags after the four
# positionals override the recipe (argparse keeps the last value), e.g.
#   bash script/train_downstream/std.sh cifar100 W SAVE TICKET --data /datasets --data_number 0.1
# TICKET "" or none: the dense model, the reference for every ticket. Re-running the same command resumes the
# run in SAVE_DIR.
# --data_number extends the original: its standard transfer has no such flag and always trains on the whole
# training split; the data-limited double-win criterion needs standard transfer at 1% and 10% too.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
usage() {
  echo "usage: bash script/train_downstream/std.sh DATASET INIT_WEIGHTS SAVE_DIR TICKET [extra flags override the recipe's values]  (TICKET \"\" or none: dense)" >&2
  echo "error: $1" >&2
  exit 2
}
[ "$#" -ge 4 ] || usage "expected 4 positional arguments, got $#"
names=(DATASET INIT_WEIGHTS SAVE_DIR)  # TICKET may be empty: the dense model
for i in 1 2 3; do [ -n "${!i}" ] || usage "${names[i-1]} (argument $i) is empty"; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/script/env.sh"
exec "$DOUBLEWIN_PY" -u "$ROOT/main_train_downstream.py" --recipe std --dataset "$1" --init "$2" --save_dir "$3" --tickets_file "$4" "${@:5}"
