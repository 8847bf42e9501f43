#!/usr/bin/env bash
# Adversarial transfer of a ticket to SVHN with the original's hyperparameters. Flags after the three
# positionals override the values below (argparse keeps the last value), e.g.
#   bash script/train_downstream/adv_svhn.sh W SAVE TICKET --data /datasets --data_number 0.1
# TICKET "" or none: the dense model, the reference for every ticket. Re-running the same command resumes the
# run in SAVE_DIR. Set PYTHON (or DOUBLEWIN_PY) to choose the interpreter.
set -euo pipefail
usage() {
  echo "usage: bash script/train_downstream/adv_svhn.sh INIT_WEIGHTS SAVE_DIR TICKET [extra flags override the values below]  (TICKET \"\" or none: dense)" >&2
  echo "error: $1" >&2
  exit 2
}
[ "$#" -ge 3 ] || usage "expected 3 positional arguments, got $#"
names=(INIT_WEIGHTS SAVE_DIR)  # TICKET may be empty: the dense model
for i in 1 2; do [ -n "${!i}" ] || usage "${names[i-1]} (argument $i) is empty"; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
args=(
  --mode adv                        # PGD adversarial fine-tuning
  --data ../data
  --dataset svhn
  --data_number 1                   # fraction of the 68,257 training images
  --arch resnet50
  --init "$1"
  --seed 1
  --batch_size 128
  --lr 0.01
  --weight_decay 5e-4
  --epochs 80
  --decreasing_lr 50,75             # listed by the original SVHN script but ignored by its code, as here:
  --scheduler cosine                # cosine annealing over the 80 epochs wins
  --warmup 0
  --eval_from 0                     # validation SA/RA every epoch
  --train_eps 8/255                 # L-inf PGD-10 training, fractions of the pixel range, as the original
  --train_step 10
  --train_gamma 2/255
  --test_eps 8/255                  # PGD-20 for validation and test RA
  --test_step 20
  --test_gamma 2/255
  --save_dir "$2"
  --tickets_file "$3"
)
exec "${PYTHON:-${DOUBLEWIN_PY:-python}}" -u "$ROOT/main_train_downstream.py" "${args[@]}" "${@:4}"
