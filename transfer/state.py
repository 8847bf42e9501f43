"""What a transfer run keeps in SAVE_DIR between epochs: the per-epoch checkpoint, the best-SA / best-RA
files and metrics rows (rank 0 writes them), resuming from them, and clearing them for --restart."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from training import optimizer as optimizer_lib
import pruning_utils
from training import runner
from infra.checkpoint import exists as checkpoint_exists
from infra.checkpoint import load_own, strip_prefix
from infra.paths import CHECKPOINT, CURVES, INDICES, METRICS, RA_BEST, RESULTS, SA_BEST, epoch_file, is_epoch_file
from infra.errors import CheckpointError
from infra.reproducibility import get_rng_state
from infra.runlog import LOGGER

log = logging.getLogger(LOGGER)

FRESH = {"epoch": 0, "best_sa": None, "best_ra": None, "best_sa_epoch": None, "best_ra_epoch": None,
         "wall_time_s": 0.0}  # "epoch": epochs completed; best_*: best val SA / RA so far and their epochs


@dataclass(frozen=True)
class Training:
    """What a transfer run trains and keeps in its checkpoint: the model as files hold it (not compiled or
    DDP-wrapped), the ticket's mask (None: dense), the optimizer, the lr schedule and the fp16 loss scaler."""
    model: nn.Module
    mask: pruning_utils.Mask | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None


def pct(v: float | None) -> str:
    """An accuracy for the log; '-' before the first validated epoch."""
    return "-" if v is None else f"{v:.2f}"


def model_state_dict(model: nn.Module, mask) -> dict:
    """torch-prune naming for a ticket (the original's tools read it), the plain state dict for the dense model."""
    return pruning_utils.masked_state_dict(model, mask) if mask is not None else model.state_dict()


def restore(model: nn.Module, state_dict: dict, mask: pruning_utils.Mask | None, path: str) -> None:
    """Load one of our state dicts (torch-prune naming or plain) after checking that its mask is this run's."""
    sd, saved = pruning_utils.unmask_state_dict(strip_prefix(state_dict))
    same = (mask is None) == (saved is None) and (
        mask is None or (set(mask) == set(saved)
                         and all(torch.equal(mask[k].cpu().bool(), saved[k].cpu()) for k in mask)))
    if not same:
        raise CheckpointError(f"{path} was trained with another mask than this run's --tickets_file: use another "
                              "--save_dir, or pass --restart to start over there")
    model.load_state_dict(sd)


def record_epoch(state: dict, row: dict, seconds: float) -> list[str]:
    """Fold one finished epoch's validation row into the run's progress; returns which bests it improved."""
    improved = [k for k in ("sa", "ra") if row[f"val_{k}"] is not None
                and (state[f"best_{k}"] is None or row[f"val_{k}"] > state[f"best_{k}"])]
    for k in improved:
        state[f"best_{k}"], state[f"best_{k}_epoch"] = row[f"val_{k}"], row["epoch"]
    state["epoch"], row["time"] = row["epoch"] + 1, seconds
    state["wall_time_s"] += seconds
    return improved


def save_epoch(cfg, run: Training, state: dict, row: dict, improved: list[str]) -> None:
    """Metrics row, improved best files, then the checkpoint: a crash in between replays the epoch on resume.

    Best files hold the weights and the 0-based epoch that earned them; the checkpoint adds everything needed
    to continue (its "epoch" counts completed epochs, as the original's).
    """
    d = cfg.save_dir
    sd = model_state_dict(run.model, run.mask)
    folder = runner.folder(d)
    folder.append_row(os.path.join(d, METRICS), row)
    for k in improved:
        folder.save({"state_dict": sd, "epoch": row["epoch"], "val_sa": row["val_sa"], "val_ra": row["val_ra"],
                     "arch": cfg.arch, "config": asdict(cfg)}, os.path.join(d, SA_BEST if k == "sa" else RA_BEST))
    if cfg.save_all:
        folder.save({"state_dict": sd, "epoch": row["epoch"], "arch": cfg.arch},
                    epoch_file(d, row["epoch"]))
    folder.save({"state_dict": sd, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "scaler": run.scaler.state_dict() if run.scaler is not None else None, **state,
                 "rng": get_rng_state(), "arch": cfg.arch, "config": asdict(cfg)}, os.path.join(d, CHECKPOINT))


def resume(cfg, is_main: bool, run: Training) -> dict:
    """Progress so far: FRESH, or restored from checkpoint.pth.tar (weights, optimizer, schedule, bests).

    RNG states need no restoring: every epoch re-seeds from (seed, epoch, rank), so a resumed epoch replays
    exactly on every rank (the checkpoint's `rng` records rank 0's state for inspection only).
    """
    path = os.path.join(cfg.save_dir, CHECKPOINT)
    if not checkpoint_exists(path):  # a stale handle is the node's fault (exit 3), not a run to start over
        if cfg.require_checkpoint:
            raise CheckpointError(f"--require-checkpoint: {path} not found; drop it to start this run")
        if is_main:  # rows of an attempt that died in its first epoch
            runner.truncate_metrics(cfg.save_dir, 0)
        return dict(FRESH)
    ck = load_own(path)
    missing = [k for k in ("state_dict", "optimizer", "scheduler", *FRESH) if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this code (no {', '.join(missing)}): use another "
                              "--save_dir, or pass --restart to start over there")
    restore(run.model, ck["state_dict"], run.mask, path)
    optimizer_lib.load_state(run.optimizer, ck["optimizer"], path)
    run.scheduler.load_state_dict(ck["scheduler"])
    if run.scaler is not None and ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    state = {k: ck[k] for k in FRESH}
    if is_main:  # drop rows of an epoch that crashed between its metrics row and its checkpoint
        runner.truncate_metrics(cfg.save_dir, state["epoch"])
    log.info(f"resuming from {path}: {state['epoch']} of {cfg.epochs} epochs done, best val SA "
             f"{pct(state['best_sa'])} (epoch {state['best_sa_epoch']}), RA {pct(state['best_ra'])} "
             f"(epoch {state['best_ra_epoch']})")
    return state


def clear_run(save_dir: str) -> list[str]:
    """--restart: remove the files an earlier run left in save_dir (the caller rewrites config.json)."""
    names = {CHECKPOINT, SA_BEST, RA_BEST, METRICS, CURVES, INDICES, RESULTS}
    gone = [n for n in sorted(os.listdir(save_dir))
            if n in names or is_epoch_file(n)]
    for n in gone:
        os.remove(os.path.join(save_dir, n))
    return gone
