"""Every file name a run writes: SAVE_DIR's files of both stages and ticket finding's per-level files (the
one place they are spelled; infra/checkpoint.py writes and reads them)."""
from __future__ import annotations

import os

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOG = "log.txt"
LEASE = ".lease"  # held (infra.leaseholder) by the process that trains into SAVE_DIR
EVALUATION = "evaluate.json"  # IMP -e/--evaluate: the loaded model's SA (and RA)
# downstream transfer
CHECKPOINT = "checkpoint.pth.tar"
SA_BEST = "model_SA_best.pth.tar"
RA_BEST = "model_RA_best.pth.tar"
RESULTS = "results.json"
INDICES = "train_indices.json"
CURVES = "curves.png"


def epoch_file(save_dir: str, epoch: int) -> str:
    """Transfer --save_all: the weights after 0-based `epoch`."""
    return os.path.join(save_dir, f"epoch{epoch}.pth.tar")


def is_epoch_file(name: str) -> bool:
    return name.startswith("epoch") and name.endswith(".pth.tar")


def imp_checkpoint(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-checkpoint.pth.tar")


def imp_best(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-model_best.pth.tar")


def imp_ticket(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-ticket.pth.tar")


def imp_sparsity(save_dir: str, level: int) -> str:
    return os.path.join(save_dir, f"{level}-sparsity.json")


def imp_files(save_dir: str, level: int) -> list[str]:
    """Every file ticket finding writes for one level."""
    return [f(save_dir, level) for f in (imp_checkpoint, imp_best, imp_ticket, imp_sparsity)]


def imp_file_level(name: str) -> int | None:
    """The level of a file name ticket finding writes (`imp_files`), None for any other name."""
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() and name in map(os.path.basename, imp_files("", int(head))) else None
