#!/usr/bin/env bash
# Standard transfer of a ticket with the original's hyperparameters. Flags after the four positionals
# override the values below (argparse keeps the last value), e.g.
#   bash script/train_downstream/std.sh cifar100 W SAVE TICKET --data /datasets --data_number 0.1
# TICKET "" or none: the dense model, the reference for every ticket. Re-running the same command resumes the
# run in SAVE_DIR. Set PYTHON (or DOUBLEWIN_PY) to choose the interpreter.
# --data_number extends the original: its standard transfer has no such flag and always trains on the whole
# training split; the data-limited double-win criterion needs standard transfer at 1% and 10% too.
set -euo pipefail
usage() {
  echo "usage: bash script/train_downstream/std.sh DATASET INIT_WEIGHTS SAVE_DIR TICKET [extra flags override the values below]  (TICKET \"\" or none: dense)" >&2
  echo "error: $1" >&2
  exit 2
}
[ "$#" -ge 4 ] || usage "expected 4 positional arguments, got $#"
names=(DATASET INIT_WEIGHTS SAVE_DIR)  # TICKET may be empty: the dense model
for i in 1 2 3; do [ -n "${!i}" ] || usage "${names[i-1]} (argument $i) is empty"; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
args=(
  --mode std                        # clean fine-tuning
  --data ../data
  --dataset "$1"                    # cifar10, cifar100, svhn or folder
  --data_number 1                   # fraction of the training split (ours: the original's std transfer uses it all)
  --arch resnet50
  --init "$2"
  --seed 1
  --batch_size 64
  --lr 0.001
  --weight_decay 5e-4
  --epochs 150
  --decreasing_lr 50,100            # lr x0.1 at these epochs
  --scheduler multistep
  --warmup 0
  --eval_from 0                     # validation every epoch
  --test_eps 8/255                  # RA too (PGD-20, 8/255, step 2/255), which the original never measured:
  --test_step 20                    # the double-win criterion needs RA of standard transfer
  --test_gamma 2/255
  --save_dir "$3"
  --tickets_file "$4"
)
exec "${PYTHON:-${DOUBLEWIN_PY:-python}}" -u "$ROOT/main_train_downstream.py" "${args[@]}" "${@:5}"
