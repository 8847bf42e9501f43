#!/usr/bin/env bash
# Adversarial transfer of a ticket to SVHN with the original's hyperparameters: `--recipe adv_svhn` of main_train_downstream.py
# (transfer/recipes.py holds its values; main_train_downstream.py --help lists them). Flags after the three
# positionals override the recipe (argparse keeps the last value), e.g.
#   bash script/train_downstream/adv_svhn.sh W SAVE TICKET --data /datasets --data_number 0.1
# TICKET "" or none: the dense model, the reference for every ticket. Re-running the same command resumes the
# run in SAVE_DIR.
# Interpreter: DOUBLEWIN_PY=/path/to/python if set, else .venv (made on first use; see script/env.sh).
set -euo pipefail
usage() {
  echo "usage: bash script/train_downstream/adv_svhn.sh INIT_WEIGHTS SAVE_DIR TICKET [extra flags override the recipe's values]  (TICKET \"\" or none: dense)" >&2
  echo "error: $1" >&2
  exit 2
}
[ "$#" -ge 3 ] || usage "expected 3 positional arguments, got $#"
names=(INIT_WEIGHTS SAVE_DIR)  # TICKET may be empty: the dense model
for i in 1 2; do [ -n "${!i}" ] || usage "${names[i-1]} (argument $i) is empty"; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/script/env.sh"
exec "$DOUBLEWIN_PY" -u "$ROOT/main_train_downstream.py" --recipe adv_svhn --init "$1" --save_dir "$2" --tickets_file "$3" "${@:4}"
