"""IMP: iterative magnitude pruning with standard (clean) training on ImageNet; no attack flags.

    bash script/imp_pretrain/imp_std.sh INIT_WEIGHTS SAVE_DIR DATA_DIR [--epochs 60 -b 256 ...]
    python main_imp_std.py DATA --init r50.pth --save_dir runs/imp --omp-level 5   # one-shot baseline
    torchrun --nproc_per_node 8 main_imp_std.py DATA --init r50.pth --save_dir runs/imp

The flags are in lottery/cli.py, the levels and epochs in lottery/levels.py (`_run`), the loop over batches in
training/engine.py (`train_one_epoch`, `evaluate`); re-running the same command resumes at the first unfinished epoch.
"""
from __future__ import annotations

import argparse

from infra import errors
from lottery import cli as imp_cli


def get_args_parser() -> argparse.ArgumentParser:
    return imp_cli.get_args_parser(adversarial=False)


def main(argv: list[str] | None = None) -> int:
    return imp_cli.main(argv, adversarial=False)


if __name__ == "__main__":
    errors.run_cli(main)
