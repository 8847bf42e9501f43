#!/usr/bin/env bash
# A-IMP on ImageNet with the paper's hyperparameters. Flags after the three positionals override the values
# below (argparse keeps the last value), e.g.  bash script/imp_pretrain/imp_adv.sh W SAVE DATA --epochs 60 -b 256
# Re-running the same command resumes the run in SAVE_DIR. Set PYTHON (or DOUBLEWIN_PY) to choose the interpreter.
set -euo pipefail
usage() {
  echo "usage: bash script/imp_pretrain/imp_adv.sh INIT_WEIGHTS SAVE_DIR DATA_DIR [extra flags override the values below]" >&2
  echo "error: $1" >&2
  exit 2
}
[ "$#" -ge 3 ] || usage "expected 3 positional arguments, got $#"
names=(INIT_WEIGHTS SAVE_DIR DATA_DIR)
for i in 1 2 3; do [ -n "${!i}" ] || usage "${names[i-1]} (argument $i) is empty"; done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
args=(
  -a resnet50
  --dist-url auto                   # chosen per run: a free port of this node (torchrun, srun: their own)
  --dist-backend nccl               # gloo is used when no GPU is visible
  --multiprocessing-distributed     # one process per GPU; one CPU process without a GPU
  --world-size 1                    # nodes
  --rank 0                          # this node
  --wd 1e-4
  --seed 1
  --lr 0.0005                       # constant
  --rate 0.2                        # 20% of the surviving conv weights per level: sparsity 1 - 0.8^k
  --train_eps 8/255                 # L-inf PGD, fractions of the [0, 1] pixel range
  --train_step 3
  --train_gamma 16/765              # 16/(3*255)
  --init "$1"
  --save_dir "$2"
  "$3"
  -b 2048                           # global batch over all GPUs
  --prune_epoch 30                  # epochs per level
  --epochs 570                      # 19 levels
)
exec "${PYTHON:-${DOUBLEWIN_PY:-python}}" -u "$ROOT/main_imp_adv.py" "${args[@]}" "${@:4}"
