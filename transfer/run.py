"""Ticket transfer, one run: load the pre-trained init, replace the head, apply the ticket's mask, fine-tune
(clean or adversarial), validate SA and RA each epoch; transfer/state.py keeps the checkpoints and best-SA /
best-RA files, transfer/results.py tests those and writes results.json. CIFAR/SVHN batches are augmented on the
device (transfer/pipeline.py, `--pipeline device`) or by DataLoader workers through PIL (`pil`, the folder data).

    transfer.run.run(DistEnv(), TransferConfig(save_dir="runs/c10", dataset="cifar10", init="r50.pth", ...))
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

import models
from training import optimizer as optimizer_lib
import pruning_utils
from training import runner
from training import weights
from attacks import build_attack
from infra.checkpoint import read_jsonl
from infra.paths import CURVES, INDICES, METRICS
from datafiles import facts
from dataset import DataFraction, Splits, build_datasets, write_indices
from infra.distributed import DistEnv, barrier
from training import ledger
from training.board import Board
from training.engine import Step, evaluate, train_one_epoch
from infra.errors import ConfigError, MaskError
from infra.reproducibility import seed_all, seed_epoch
from infra.runlog import LOGGER
from transfer import results as transfer_results
from transfer import state as transfer_state
from transfer.config import PIPELINES, TransferConfig
from transfer.data import DeviceData, HostData, run_data
from transfer.pipeline import EVAL_TRANSFORMS, TRAIN_TRANSFORMS
from transfer.state import Training, pct

log = logging.getLogger(LOGGER)


# ---------------------------------------------------------------------------- model, init and ticket
def build_model(cfg: TransferConfig, splits: Splits) -> tuple[nn.Module, pruning_utils.Mask | None, dict]:
    """The init loaded strictly under a fresh head, dataset normalisation inside, the ticket's mask applied."""
    model = models.build(cfg.arch, 1000, small_input=cfg.small_input)
    models.replace_head(model, splits.num_classes)
    info: dict = {"init": cfg.init, "init_format": None, "ticket": cfg.ticket, "ticket_meta": {}}
    if cfg.init is None:
        log.warning("WARNING: no --init: fine-tuning from a RANDOM initialisation, which is not a transfer")
    else:
        loaded = weights.read_weights(cfg.init, trusted=cfg.trust_pickle)
        log.info("init " + weights.load_into(model, loaded, head="replace"))
        info["init_format"] = loaded.format
        if loaded.mask is not None and cfg.ticket is None:
            log.warning("WARNING: the init carries a pruning mask but no --tickets_file was given: its pruned "
                        "weights start at zero and are free to grow (dense transfer)")
    models.set_normalization(model, splits.mean, splits.std)
    mask = None
    if cfg.ticket is not None:
        mask, meta = pruning_utils.load_ticket(cfg.ticket, trusted=cfg.trust_pickle)
        try:
            pruning_utils.validate_mask(mask, model)
        except MaskError as e:
            raise MaskError(f"ticket {cfg.ticket} does not fit --arch {cfg.arch}: {e}") from None
        _check_ticket_init(cfg, meta, pruning_utils.weights_digest(model.state_dict(), mask))
        pruning_utils.apply_mask(model, mask)
        info["ticket_meta"] = {k: v for k, v in meta.items() if transfer_results.plain(v)}
    info["ticket_sparsity"] = pruning_utils.sparsity(mask) if mask is not None else 0.0
    log.info(f"ticket: {cfg.ticket or 'none (dense model)'}, sparsity {100 * info['ticket_sparsity']:.2f}% "
             "of the conv weights")
    return model, mask, info


def _check_ticket_init(cfg: TransferConfig, meta: dict, digest: str) -> None:
    """A ticket is a mask for the weights it was found in: refuse (one line) a ticket whose init digest is not
    that of --init's weights, unless --any-ticket-init asks for that experiment. Tickets without a digest (the
    original's, hand-made ones) are not checked."""
    found = meta.get("init_digest")
    if found is None or found == digest:
        return
    where = f" ({meta['init']})" if meta.get("init") else ""
    if cfg.any_ticket_init:
        log.warning(f"WARNING: ticket {cfg.ticket} was found in other init weights{where} than --init "
                    f"{cfg.init} (digest {found} != {digest}): applied anyway (--any-ticket-init)")
        return
    raise MaskError(f"ticket {cfg.ticket} was found in other weights{where}, not in --init {cfg.init or '(random)'} "
                    f"(weights digest {found} != {digest}): pass the init it was found in, or --any-ticket-init "
                    "to apply it to these weights on purpose")


# ---------------------------------------------------------------------------- data
def resolve_pipeline(cfg: TransferConfig) -> str:
    """The input pipeline a run uses, "device" or "pil": `auto` is device for the datasets the table marks so
    (CIFAR-10/100 and SVHN: faster than the PIL workers on GPU and CPU alike) and pil for the others (folder data
    has no uint8 array); device with another dataset is a ConfigError naming --pipeline."""
    if cfg.pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline {cfg.pipeline!r}: choose one of {', '.join(PIPELINES)}")
    served = facts.get(cfg.dataset).device
    if served and cfg.pipeline != "pil":
        _device_applies_the_tables_transforms(cfg.dataset)
    if cfg.pipeline == "auto":
        return "device" if served else "pil"
    if cfg.pipeline == "device" and not served:
        raise ConfigError(f"--pipeline device serves {', '.join(facts.device_served())} (uint8 arrays); --dataset "
                          f"{cfg.dataset} goes through torchvision's PIL transforms: pass --pipeline pil or auto")
    return cfg.pipeline


def _device_applies_the_tables_transforms(name: str) -> None:
    """A dataset the table marks `device` must name transforms the device pipeline has: else one clear error."""
    spec = facts.get(name)
    for kind, chosen, known in (("train", spec.train_transform, TRAIN_TRANSFORMS),
                                ("eval", spec.eval_transform, EVAL_TRANSFORMS)):
        if chosen not in known:
            raise ConfigError(f"dataset {name!r} is marked device=True in datafiles/facts.py but the device pipeline "
                              f"has no {kind} transform {chosen!r} (it has {', '.join(known)}): set device=False "
                              f"there (torchvision's PIL path applies it), or add it to transfer/pipeline.py")


class Warmup:
    """Iterates a loader while setting the lr before each step: lr * min(1, done_steps / (warmup * steps))."""

    def __init__(self, loader, optimizer: torch.optim.Optimizer, lr: float, warmup: int, epoch: int):
        self.loader, self.optimizer, self.lr, self.warmup, self.epoch = loader, optimizer, lr, warmup, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        n = len(self.loader)
        for step, batch in enumerate(self.loader, 1):
            for group in self.optimizer.param_groups:
                group["lr"] = min(self.lr, self.lr * (self.epoch * n + step) / (self.warmup * n))
            yield batch


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TransferConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)


# ---------------------------------------------------------------------------- the run
def run(env: DistEnv, cfg: TransferConfig) -> None:
    """The worker every rank runs (module level, so spawn can pickle it); only rank 0 writes files.
    Re-running continues where a crash stopped."""
    runner.in_worker(_run, env, cfg)


def _run(env: DistEnv, cfg: TransferConfig) -> None:
    if transfer_results.is_complete(cfg):
        log.info(f"{cfg.save_dir} already holds complete results; nothing to do (--restart runs it again)")
        return
    log.info(f"transfer ({cfg.mode}) on {cfg.dataset}: {env.describe()}")
    batch = runner.per_rank_batch(cfg.batch_size, env, flag="--batch_size")
    eval_from = _first_validated_epoch(cfg, env)
    pipeline = resolve_pipeline(cfg)
    seed_all(cfg.seed)
    splits = _load_splits(cfg, env)
    data = run_data(pipeline, splits, cfg, env, batch)
    log.info(f"input pipeline: {pipeline} (--pipeline {cfg.pipeline}): {data.describe()}")
    model, mask, info = build_model(cfg, splits)
    model.to(env.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    if mask is not None:
        mask = {k: v.to(env.device) for k, v in mask.items()}
    optimizer = optimizer_lib.make_sgd(model, optimizer_lib.SGDSettings(cfg.lr, cfg.momentum, cfg.weight_decay,
                                                                        cfg.fused_sgd))
    training = Training(model=model, mask=mask, optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg),
                        scaler=optimizer_lib.make_scaler(cfg.amp, env.device))
    state = transfer_state.resume(cfg, env.is_main, training)
    net = runner.wrap(model, env, compile=cfg.compile, sync_bn=cfg.sync_bn)
    step = Step(env, amp=cfg.amp, channels_last=cfg.channels_last,
                attack=build_attack(cfg.train_attack, cfg.attack_loss), mask=mask, show_progress=cfg.show_progress,
                flops=ledger.FlopTable(model))
    log.info(f"train on {cfg.train_attack.describe() if cfg.train_attack else 'clean images'}; "
             f"validate SA and RA ({cfg.test_attack.describe()}) from epoch {eval_from}")
    title = f"{cfg.mode} transfer to {cfg.dataset} ({cfg.data_number:g}), " + \
        (f"ticket at {100 * info['ticket_sparsity']:.1f}% sparsity" if mask is not None else "dense")
    board = Board(cfg.save_dir, read_jsonl(os.path.join(cfg.save_dir, METRICS)), state["epoch"]) \
        if cfg.tensorboard and env.is_main else None
    loop = Epochs(cfg, net, training, data, train=step, test_attack=build_attack(cfg.test_attack, cfg.attack_loss),
                  eval_from=eval_from, title=title, board=board)
    for epoch in range(state["epoch"], cfg.epochs):
        loop.epoch(epoch, state)
    if board is not None:
        board.close()
    transfer_results.finish(env, cfg, training, data, info, state)


@dataclass(frozen=True)
class Epochs:
    """The fixed pieces of a run's epochs: `net` trains (compiled, DDP-wrapped), `training` holds what files keep,
    `train` is the training step (the ranks, its attack and the ticket's mask), `test_attack` the validation RA's."""
    cfg: TransferConfig
    net: nn.Module
    training: Training
    data: DeviceData | HostData
    train: Step
    test_attack: Callable | None
    eval_from: int
    title: str
    board: Board | None = None  # --tensorboard (rank 0)

    def epoch(self, epoch: int, state: dict) -> None:
        """Train one epoch, validate SA and RA from --eval_from on, log, and (rank 0) save its files."""
        cfg, env, optimizer = self.cfg, self.train.env, self.training.optimizer
        start = time.time()
        seed_epoch(cfg.seed, epoch, env.rank)
        loader = self.data.train_epoch(epoch)
        if epoch < cfg.warmup:
            loader = Warmup(loader, optimizer, cfg.lr, cfg.warmup, epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(self.net, loader, optimizer, self.train, scaler=self.training.scaler, epoch=epoch,
                                desc=f"train {epoch + 1}/{cfg.epochs}")
        self.training.scheduler.step()
        row = runner.metrics_row(epoch, lr, stats, val_sa=None, val_ra=None)
        evals = []
        if epoch >= self.eval_from:
            val = replace(self.train, attack=None, mask=None)
            evals = [evaluate(self.net, self.data.val, val, desc="val SA"),
                     evaluate(self.net, self.data.val, replace(val, attack=self.test_attack), desc="val RA")]
            row["val_sa"], row["val_ra"] = evals[0]["top1"], evals[1]["top1"]
        improved = transfer_state.record_epoch(state, row, time.time() - start)
        row["cost"] = ledger.epoch_cost(stats, evals, row["time"], device=env.device, devices=env.world_size,
                                        amp=cfg.amp)
        log.info(f"epoch {epoch}: lr {lr:.4g} train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f} "
                 f"| val SA {pct(row['val_sa'])} RA {pct(row['val_ra'])} | best SA {pct(state['best_sa'])} "
                 f"RA {pct(state['best_ra'])} | {row['time']:.0f}s")
        if env.is_main:
            transfer_state.save_epoch(cfg, self.training, state, row, improved)
            if self.board is not None:
                self.board.add(row)
            transfer_results.plot_curves(read_jsonl(os.path.join(cfg.save_dir, METRICS)),
                                         os.path.join(cfg.save_dir, CURVES), cfg.mode, self.title)
        barrier(env)


def _first_validated_epoch(cfg: TransferConfig, env: DistEnv) -> int:
    """--eval_from, or 0 when it is not below --epochs (a short trial of a script that validates late: the
    best-SA/RA checkpoints must exist); warns about milestones a short run never reaches."""
    late = [m for m in cfg.milestones if m >= cfg.epochs] if cfg.scheduler == "multistep" else []
    if late and env.is_main:  # normal for a short trial run with a smaller --epochs, so not an error
        log.warning(f"WARNING: --decreasing_lr milestone(s) {','.join(map(str, late))} at or after --epochs "
                    f"{cfg.epochs} never lower the lr in this run")
    if cfg.eval_from < cfg.epochs:
        return cfg.eval_from
    if env.is_main:
        log.warning(f"WARNING: --eval_from {cfg.eval_from} is not below --epochs {cfg.epochs}: validating every "
                    "epoch so that the best-SA/RA checkpoints exist")
    return 0


def _load_splits(cfg: TransferConfig, env: DistEnv) -> Splits:
    """The run's splits (rank 0 downloads alone with --download; the others then read its files), logged; rank
    0 writes the training indices of the data fraction."""
    splits = _datasets(cfg, cfg.download) if env.is_main or not cfg.download else None
    if cfg.download:
        barrier(env)
        splits = splits or _datasets(cfg, False)
    log.info(f"data: {len(splits.train)} train ({cfg.data_number:g} of the split, {cfg.subset}), "
             f"{len(splits.val)} val, {len(splits.test)} test images, {splits.num_classes} classes")
    if splits.test.dataset is splits.val.dataset and list(splits.test.indices) == list(splits.val.indices):
        log.warning("WARNING: no separate test split: the test numbers are measured on the validation images "
                    "that chose the best checkpoints")
    if env.is_main:
        write_indices(os.path.join(cfg.save_dir, INDICES), splits.train_indices)
    return splits


def _datasets(cfg: TransferConfig, download: bool) -> Splits:
    return build_datasets(cfg.dataset, cfg.data, DataFraction(cfg.data_number, cfg.subset, cfg.seed),
                          image_size=cfg.image_size, resize_size=cfg.resize_size, download=download)
