"""What an IMP run leaves on disk and how it continues: where a run stands (`Position`), checkpoint contents, the
checkpoint to resume from, restoring weights, mask and rewind point from it, and clearing an earlier run's level
files (--restart)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from infra import checkpoint as files
from infra import paths
from infra import distributed
import models
import pruning_utils
from training import weights
from infra.distributed import DistEnv
from infra.errors import CheckpointError, ConfigError
from lottery.config import IMPConfig, config_dict
from lottery.early_bird import Watch
from pruning_utils import Mask


@dataclass
class Position:
    """Where a ticket-finding run stands: the level being trained and its mask, the rewind point (`init_state`),
    epochs done over all levels (an early-bird level that stopped counts all of its --prune_epoch epochs done),
    the level's best val SA so far, the optimizer state to continue from (None: a fresh optimizer) and the
    level's window of candidate masks (for `mask_distance` and --early-bird; None with random pruning)."""
    mask: Mask
    init_state: dict
    level: int
    done: int = 0
    best: float | None = None
    optimizer: dict | None = None
    watch: Watch | None = None
    val_ra: float | None = None  # --robust-val: the last epoch's, for the collapse warning (not checkpointed)


def clear_outputs(save_dir: str) -> list[str]:
    """Delete the level files and metrics of an earlier run in `save_dir` (for --restart); returns the names."""
    if not os.path.isdir(save_dir):
        return []
    levels = {paths.imp_file_level(f) for f in os.listdir(save_dir)} - {None}
    doomed = [p for k in sorted(levels) for p in paths.imp_files(save_dir, k)]
    doomed.append(os.path.join(save_dir, paths.METRICS))
    removed = [p for p in doomed if os.path.exists(p)]
    for p in removed:
        os.remove(p)
    return [os.path.basename(p) for p in removed]


def _fit(net: torch.nn.Module, state: dict, where: str) -> None:
    """CheckpointError naming the keys when `state` does not load strictly into `net`."""
    own = net.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        parts = [f"{label} {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("other shape", shapes)) if keys]
        raise CheckpointError(f"{where} does not fit this --arch / number of classes: {'; '.join(parts)}")


def _own_latest(save_dir: str) -> int | None:
    if not files.exists(save_dir, "dir"):  # a stale handle is the node's fault (exit 3), not a fresh start
        return None
    found = [k for f in os.listdir(save_dir)
             if (k := paths.imp_file_level(f)) is not None and f == os.path.basename(paths.imp_checkpoint("", k))]
    return max(found, default=None)


def _read_checkpoint(path: str, cfg: IMPConfig) -> dict:
    """A checkpoint to continue from: this run's own ones (found by listing SAVE_DIR) are never unpickled,
    only an explicit --resume file may be, with --trust-pickle."""
    obj = files.load_file(path, trusted=cfg.trust_pickle) if path == cfg.resume else files.load_own(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) or "epoch" not in obj:
        raise CheckpointError(f"{path} is not an IMP checkpoint (no 'state_dict' and 'epoch'): pass a "
                              "<level>-checkpoint.pth.tar file to --resume")
    return obj


def find_resume(cfg: IMPConfig, env: DistEnv, *, own: bool = True) -> tuple[str | None, dict | None]:
    """The checkpoint to continue from: this run's latest level checkpoint or --resume, whichever has more
    epochs done (this run's on a tie). Rank 0 decides; every rank then reads the same file."""
    choice = torch.zeros(2, dtype=torch.int64, device=env.device)  # (0 none | 1 own | 2 --resume, level)
    picked = None
    if env.is_main:
        latest = _own_latest(cfg.save_dir) if own else None
        candidates = [(1, latest, paths.imp_checkpoint(cfg.save_dir, latest))] if latest is not None else []
        candidates += [(2, 0, cfg.resume)] if cfg.resume else []
        for kind, level, path in candidates:
            obj = _read_checkpoint(path, cfg)
            if picked is None or int(obj["epoch"]) > int(picked[2]["epoch"]):
                picked = (kind, level, obj)
        if picked is not None:
            choice = torch.tensor(picked[:2], dtype=torch.int64, device=env.device)
    kind, level = distributed.broadcast_(choice, env).tolist()
    if kind == 0:
        return None, None
    path = cfg.resume if kind == 2 else paths.imp_checkpoint(cfg.save_dir, level)
    return path, picked[2] if env.is_main else _read_checkpoint(path, cfg)


def restore(net: torch.nn.Module, obj: dict, path: str, init_state: dict) -> tuple[Mask, dict]:
    """Load a checkpoint's (masked) weights into `net`; returns its mask and its init (the run's rewind point).
    The original A-IMP's files also hold its normalisation layer's `normalize.mean/std` (in `state_dict` and
    `init`): `net` takes those stats, as the model the checkpoint holds."""
    state, mean, std = weights.split_normalization(files.strip_prefix(obj["state_dict"]))
    state, mask = pruning_utils.unmask_state_dict(state)
    _fit(net, state, path)
    net.load_state_dict(state)
    if mean is not None:
        models.set_normalization(net, mean, std)
    mask = pruning_utils.full_mask(net) if mask is None else mask
    pruning_utils.validate_mask(mask, net)
    device = next(net.parameters()).device
    mask = {k: v.to(device) for k, v in mask.items()}
    if isinstance(obj.get("init"), dict):
        init_state = weights.split_normalization(files.strip_prefix(obj["init"]))[0]
        _fit(net, init_state, f"{path} (its 'init')")
    return mask, init_state


def level_of(obj: dict, path: str, cfg: IMPConfig) -> tuple[int, int]:
    """(level, epochs done) of a checkpoint, checked against --prune_epoch / --epochs."""
    done, level = int(obj["epoch"]), int(obj.get("level", obj.get("state_prune", 0)))
    p = cfg.prune_epoch
    if not (level - 1) * p < done <= min(level * p, cfg.epochs):
        raise ConfigError(f"{path} is level {level} after {done} epochs, which does not fit --prune_epoch {p} "
                          f"and --epochs {cfg.epochs}: resume with the flags that made it")
    return level, done


def checkpoint_dict(net, at: Position, optimizer, scaler, cfg: IMPConfig) -> dict:
    """What `<level>-checkpoint.pth.tar` / `<level>-model_best.pth.tar` hold: plain values, weights_only-safe."""
    out = {"state_dict": pruning_utils.masked_state_dict(net, at.mask), "optimizer": optimizer.state_dict(),
           "epoch": at.done, "level": at.level, "best_acc1": at.best, "init": at.init_state, "arch": cfg.arch,
           "sparsity": pruning_utils.sparsity(at.mask), "config": config_dict(cfg)}
    if scaler is not None:
        out["scaler"] = scaler.state_dict()
    if at.watch is not None:
        out["candidate_masks"] = at.watch.state_dict()
    return out
