"""Ticket transfer, one run: load the pre-trained init, replace the head, apply the ticket's mask, fine-tune
(clean or adversarial), validate SA and RA each epoch; transfer/state.py keeps the checkpoints and best-SA /
best-RA files, transfer/results.py tests those and writes results.json. CIFAR/SVHN batches are augmented on the
device (transfer/pipeline.py, `--pipeline device`) or by DataLoader workers through PIL (`pil`, the folder data).

    transfer.run.run(DistEnv(), TransferConfig(save_dir="runs/c10", dataset="cifar10", init="r50.pth", ...))
"""
from __future__ import annotations

import os
import time

import torch
from torch import nn

import models
from training import optimizer as optimizer_lib
import pruning_utils
from training import runner
from training import weights
from attacks import build_attack
from infra.checkpoint import CURVES, INDICES, METRICS, read_jsonl
from dataset import Splits, build_datasets, write_indices
from infra.distributed import DistEnv, barrier
from training.engine import evaluate, train_one_epoch
from infra.errors import ConfigError, MaskError
from infra.reproducibility import epoch_generator, seed_all
from transfer import results as transfer_results
from transfer import state as transfer_state
from transfer.config import DEVICE_DATASETS, PIPELINES, TransferConfig
from transfer.pipeline import DeviceAugment, DeviceBatches, DeviceEvalResize, uint8_tensors
from transfer.state import pct


# ---------------------------------------------------------------------------- model, init and ticket
def build_model(cfg: TransferConfig, splits: Splits, log) -> tuple[nn.Module, pruning_utils.Mask | None, dict]:
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
        pruning_utils.apply_mask(model, mask)
        info["ticket_meta"] = {k: v for k, v in meta.items() if transfer_results.plain(v)}
    info["ticket_sparsity"] = pruning_utils.sparsity(mask) if mask is not None else 0.0
    log.info(f"ticket: {cfg.ticket or 'none (dense model)'}, sparsity {100 * info['ticket_sparsity']:.2f}% "
             "of the conv weights")
    return model, mask, info


# ---------------------------------------------------------------------------- data
def resolve_pipeline(cfg: TransferConfig) -> str:
    """The input pipeline a run uses, "device" or "pil": `auto` is device for CIFAR-10/100 and SVHN (faster than
    the PIL workers on GPU and CPU alike) and pil for folder data, which has no uint8 array; device with folder
    data is a ConfigError naming --pipeline."""
    if cfg.pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline {cfg.pipeline!r}: choose one of {', '.join(PIPELINES)}")
    if cfg.pipeline == "auto":
        return "device" if cfg.dataset in DEVICE_DATASETS else "pil"
    if cfg.pipeline == "device" and cfg.dataset not in DEVICE_DATASETS:
        raise ConfigError(f"--pipeline device serves {', '.join(DEVICE_DATASETS)} (uint8 arrays); --dataset "
                          f"{cfg.dataset} goes through torchvision's PIL transforms: pass --pipeline pil or auto")
    return cfg.pipeline


def augment_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the device pipeline's crop and flip generator for one epoch on one rank: drawn from
    `epoch_generator(seed, epoch, rank)` (a pure function of the three) rather than its own seed, so the crops
    are not the same random stream as the epoch's global seed (PGD's random starts) or its order."""
    return int(torch.randint(2**62, (1,), generator=epoch_generator(seed, epoch, rank)))


class DeviceData:
    """The device pipeline of one run: the uint8 train/val/test images moved to `env.device` once, training
    batches in an order and with crops that are a pure function of (seed, epoch, rank), and evaluation
    batches sharded like ShardSampler (every image exactly once over the ranks)."""

    def __init__(self, splits: Splits, cfg: TransferConfig, env: DistEnv, batch: int) -> None:
        self.cfg, self.env = cfg, env
        self.generator = torch.Generator(device=env.device)
        augment = DeviceAugment(cfg.image_size, generator=self.generator, channels_last=cfg.channels_last)
        self.train = DeviceBatches(*self._tensors(splits.train), batch, transform=augment, shuffle=True,
                                   seed=cfg.seed, rank=env.rank, world_size=env.world_size)
        resize = DeviceEvalResize(cfg.image_size, cfg.resize_size, channels_last=cfg.channels_last)
        self.val = DeviceBatches(*self._tensors(splits.val), batch, transform=resize, rank=env.rank,
                                 world_size=env.world_size)
        self.test = DeviceBatches(*self._tensors(splits.test), batch, transform=resize, rank=env.rank,
                                  world_size=env.world_size)

    def _tensors(self, split) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = uint8_tensors(split)
        return images.to(self.env.device), labels.to(self.env.device)

    def train_epoch(self, epoch: int) -> DeviceBatches:
        """The training batches of `epoch`: its order, and its crop/flip generator re-seeded for it."""
        self.train.set_epoch(epoch)
        self.generator.manual_seed(augment_seed(self.cfg.seed, epoch, self.env.rank))
        return self.train


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


def _run(env: DistEnv, cfg: TransferConfig, log) -> None:
    if transfer_results.is_complete(cfg):
        log.info(f"{cfg.save_dir} already holds complete results; nothing to do (--restart runs it again)")
        return
    log.info(f"transfer ({cfg.mode}) on {cfg.dataset}: {env.describe()}")
    batch = runner.per_rank_batch(cfg.batch_size, env, log, flag="--batch_size")
    eval_from = _first_validated_epoch(cfg, env, log)
    pipeline = resolve_pipeline(cfg)
    seed_all(cfg.seed)
    splits = _load_splits(cfg, env, log)
    data = DeviceData(splits, cfg, env, batch) if pipeline == "device" else None
    log.info(f"input pipeline: {pipeline} (--pipeline {cfg.pipeline}): " + (
        f"uint8 images on {env.device}, cropped, flipped and resized there" if data is not None else
        f"torchvision's PIL transforms in {cfg.workers} DataLoader worker(s) per process"))
    model, mask, info = build_model(cfg, splits, log)
    model.to(env.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    if mask is not None:
        mask = {k: v.to(env.device) for k, v in mask.items()}
    optimizer = optimizer_lib.make_sgd(model, optimizer_lib.SGDSettings(cfg.lr, cfg.momentum, cfg.weight_decay,
                                                                        cfg.fused_sgd))
    scheduler = make_scheduler(optimizer, cfg)
    scaler = optimizer_lib.make_scaler(cfg.amp, env.device)
    state = transfer_state.resume(cfg, env.is_main, model, mask, optimizer, scheduler, scaler, log)
    net = runner.wrap(model, env, compile=cfg.compile, sync_bn=cfg.sync_bn)
    train_attack = build_attack(cfg.train_attack, cfg.attack_loss)
    test_attack = build_attack(cfg.test_attack, cfg.attack_loss)
    log.info(f"train on {cfg.train_attack.describe() if cfg.train_attack else 'clean images'}; "
             f"validate SA and RA ({cfg.test_attack.describe()}) from epoch {eval_from}")
    val_loader = data.val if data is not None else runner.eval_loader(splits.val, batch, env=env, workers=cfg.workers)
    title = f"{cfg.mode} transfer to {cfg.dataset} ({cfg.data_number:g}), " + \
        (f"ticket at {100 * info['ticket_sparsity']:.1f}% sparsity" if mask is not None else "dense")
    run_opts = dict(device=env.device, env=env, amp=cfg.amp, channels_last=cfg.channels_last,
                    show_progress=cfg.show_progress)
    for epoch in range(state["epoch"], cfg.epochs):
        start = time.time()
        runner.seed_epoch(cfg.seed, epoch, env.rank)
        loader = data.train_epoch(epoch) if data is not None else \
            runner.train_loader(splits.train, batch, seed=cfg.seed, epoch=epoch, env=env, workers=cfg.workers)
        if epoch < cfg.warmup:
            loader = Warmup(loader, optimizer, cfg.lr, cfg.warmup, epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(net, loader, optimizer, attack=train_attack, mask=mask, epoch=epoch,
                                scaler=scaler, desc=f"train {epoch + 1}/{cfg.epochs}", **run_opts)
        scheduler.step()
        row = {"epoch": epoch, "lr": lr, "train_loss": stats["loss"], "train_acc": stats["top1"],
               "val_sa": None, "val_ra": None}
        if epoch >= eval_from:
            row["val_sa"] = evaluate(net, val_loader, desc="val SA", **run_opts)["top1"]
            row["val_ra"] = evaluate(net, val_loader, attack=test_attack, desc="val RA", **run_opts)["top1"]
        improved = transfer_state.record_epoch(state, row, time.time() - start)
        log.info(f"epoch {epoch}: lr {lr:.4g} train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f} "
                 f"| val SA {pct(row['val_sa'])} RA {pct(row['val_ra'])} | best SA {pct(state['best_sa'])} "
                 f"RA {pct(state['best_ra'])} | {row['time']:.0f}s")
        if env.is_main:
            transfer_state.save_epoch(cfg, model, mask, optimizer, scheduler, scaler, state, row, improved)
            transfer_results.plot_curves(read_jsonl(os.path.join(cfg.save_dir, METRICS)),
                                         os.path.join(cfg.save_dir, CURVES), cfg.mode, title)
        barrier(env)
    test_loader = data.test if data is not None else runner.eval_loader(splits.test, batch, env=env, workers=cfg.workers)
    transfer_results.finish(env, cfg, model, mask, splits, info, state, test_loader, test_attack, log,
                            pipeline=pipeline, fetch=data.test.batch if data is not None else None)


def _first_validated_epoch(cfg: TransferConfig, env: DistEnv, log) -> int:
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


def _load_splits(cfg: TransferConfig, env: DistEnv, log) -> Splits:
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
    return build_datasets(cfg.dataset, cfg.data, data_number=cfg.data_number, subset=cfg.subset, seed=cfg.seed,
                          image_size=cfg.image_size, resize_size=cfg.resize_size, download=download)
