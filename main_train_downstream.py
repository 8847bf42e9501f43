"""Transfer a ticket (or the dense model) to CIFAR-10/100, SVHN or an ImageFolder dataset with standard or
adversarial fine-tuning, then test the best-SA and best-RA checkpoints for SA and RA.

    bash script/train_downstream/adv_cifar.sh cifar10 r50_init.pth runs/c10_adv_l9 runs/imp/9-ticket.pth.tar
    python main_train_downstream.py --mode std --dataset svhn --init r50_init.pth --save_dir runs/x --tickets_file ''
    torchrun --nproc_per_node 4 main_train_downstream.py ...        # one process per GPU, --batch_size is global

Re-running the same command continues a crashed run; a finished run is left as it is (--restart starts over).
The flags are in transfer/cli.py, the run in transfer/run.py (`transfer.run._run`; one epoch: `Epochs.epoch`),
the loop over batches in training/engine.py (`train_one_epoch`, `evaluate`), the final test in transfer/results.py.
"""
from __future__ import annotations

import argparse

from infra import errors
from transfer import cli


def get_args_parser() -> argparse.ArgumentParser:
    return cli.get_args_parser()


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    errors.run_cli(main)
