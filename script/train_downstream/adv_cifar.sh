#!/usr/bin/env bash
# Adversarial transfer of a ticket to CIFAR-10/100 with the original's hyperparameters. Flags after the four
# positionals override the values below (argparse keeps the last value), e.g.
#   bash script/train_downstream/adv_cifar.sh cifar10 W SAVE TICKET --data /datasets --data_number 0.1
# TICKET "" or none: the dense model, the reference for every ticket. Re-running the same command resumes the
# run in SAVE_DIR. Set PYTHON (or DOUBLEWIN_PY) to choose the interpreter.
set -euo pipefail
usage() {
  echo "usage: bash script/train_downstream/adv_cifar.sh DATASET INIT_WEIGHTS SAVE_DIR TICKET [extra flags override the values below]  (TICKET \"\" or none: dense)" >&2
  echo "error: $1" >&2
  exit 2
}
[ "$#" -ge 4 ] || usage "expected 4 positional arguments, got $#"
names=(DATASET INIT_WEIGHTS SAVE_DIR)  # TICKET may be empty: the dense model
for i in 1 2 3; do [ -n "${!i}" ] || usage "${names[i-1]} (argument $i) is empty"; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
args=(
  --mode adv                        # PGD adversarial fine-tuning
  --data ../data
  --dataset "$1"                    # cifar10 or cifar100
  --data_number 1                   # fraction of the 45,000 training images (0.01 and 0.1 in the paper)
  --arch resnet50
  --init "$2"
  --seed 1
  --batch_size 128
  --lr 0.1
  --weight_decay 5e-4
  --epochs 100
  --decreasing_lr 50,75             # lr x0.1 at these epochs
  --scheduler multistep
  --warmup 0
  --eval_from 45                    # validation SA/RA from epoch 45 on, as the original (saves time)
  --train_eps 8/255                 # L-inf PGD-10 training, fractions of the pixel range, as the original
  --train_step 10
  --train_gamma 2/255
  --test_eps 8/255                  # PGD-20 for validation and test RA
  --test_step 20
  --test_gamma 2/255
  --save_dir "$3"
  --tickets_file "$4"
)
exec "${PYTHON:-${DOUBLEWIN_PY:-python}}" -u "$ROOT/main_train_downstream.py" "${args[@]}" "${@:5}"
