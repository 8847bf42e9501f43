"""A-IMP: iterative magnitude pruning with adversarial (L-inf PGD, or FGSM-RS) training on ImageNet.

    bash script/imp_pretrain/imp_adv.sh INIT_WEIGHTS SAVE_DIR DATA_DIR [--epochs 60 -b 256 ...]
    python main_imp_adv.py DATA --init r50.pth --save_dir runs/aimp            # one process (GPU or CPU)
    torchrun --nproc_per_node 8 main_imp_adv.py DATA --init r50.pth --save_dir runs/aimp

The flags are in lottery/cli.py, the levels and epochs in lottery/levels.py (`_run`), the loop over batches in
training/engine.py (`train_one_epoch`, `evaluate`); re-running the same command resumes at the first unfinished epoch.
"""
from __future__ import annotations

import argparse

from infra import errors
from lottery import cli as imp_cli


def get_args_parser() -> argparse.ArgumentParser:
    return imp_cli.get_args_parser(adversarial=True)


def main(argv: list[str] | None = None) -> int:
    return imp_cli.main(argv, adversarial=True)


if __name__ == "__main__":
    errors.run_cli(main)
