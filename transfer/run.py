"""Ticket transfer, one run: load the pre-trained init, replace the head, apply the ticket's mask, fine-tune
(clean or adversarial), validate SA and RA each epoch; transfer_state keeps the checkpoints and best-SA /
best-RA files, transfer_eval tests those and writes results.json. CIFAR/SVHN batches are augmented on the
device (gpu_augment, `--pipeline device`) or by DataLoader workers through PIL (`pil`, the folder datasets').

    transfer.run(DistEnv(), TransferConfig(save_dir="runs/c10", dataset="cifar10", init="r50.pth", ...))
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import models
import optimizer as optimizer_lib
import pruning_utils
import runlog
from transfer import results as transfer_results
from transfer import state as transfer_state
import weights
from attacks import AttackConfig, build_attack
from checkpoint import CURVES, INDICES, METRICS, read_jsonl
from dataset import Splits, build_datasets, write_indices
from distributed import DistEnv, ShardSampler, barrier, cleanup, wrap_model
from engine import evaluate, train_one_epoch
from errors import ConfigError, MaskError
from transfer.pipeline import DeviceAugment, DeviceBatches, DeviceEvalResize, loader_settings, uint8_tensors
from reproducibility import epoch_generator, seed_all
from transfer.state import pct

DATASETS = ("cifar10", "cifar100", "svhn", "folder")
SCHEDULERS = ("multistep", "cosine")
PIPELINES = ("auto", "device", "pil")
DEVICE_DATASETS = ("cifar10", "cifar100", "svhn")  # held as one uint8 array: the device pipeline serves them


@dataclass(frozen=True)
class TransferConfig:
    save_dir: str
    dataset: str
    data: str = "../data"
    data_number: float = 1.0             # fraction of the training split kept (data-limited transfer)
    subset: str = "first"                # first: the original's first N; balanced: seeded class-balanced draw
    image_size: int = 224
    resize_size: int = 256
    download: bool = False
    workers: int = 4
    arch: str = "resnet50"
    small_input: bool = False
    init: str | None = None              # None: random initialisation (warned about)
    ticket: str | None = None            # None: the dense model
    trust_pickle: bool = False
    mode: str = "adv"                    # "std": clean training; "adv": training on train_attack examples
    train_attack: AttackConfig | None = None
    test_attack: AttackConfig = field(default_factory=lambda: AttackConfig("pgd", 8 / 255, 2 / 255, 20))
    seed: int = 1
    batch_size: int = 128                # global batch, split over the ranks
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 100
    warmup: int = 0                      # epochs of per-step linear lr warm-up (the original's warmup_lr)
    milestones: tuple[int, ...] = (50, 75)
    scheduler: str = "multistep"         # multistep (x0.1 at milestones) or cosine over all epochs
    eval_from: int = 0                   # first (0-based) epoch validated; the original's CIFAR adv code used 45
    autoattack: int = 0                  # test images evaluated with AutoAttack; 0 = off
    autoattack_version: str = "standard"
    autoattack_attacks: tuple[str, ...] = ()   # only with version "custom"
    save_all: bool = False
    require_checkpoint: bool = False     # --resume: fail unless there is a checkpoint to continue
    deterministic: bool = False
    amp: str | None = None
    test_amp: bool = False               # final test under --amp too (default: fp32, whatever the training's amp)
    channels_last: bool = True
    pipeline: str = "auto"               # where batches are augmented: auto, device or pil (resolve_pipeline)
    fused_sgd: bool = True               # one fused SGD kernel (the same update up to the last bit: FMA)
    compile: bool = False                # nn.Module.compile() in place (parameter names kept)
    show_progress: bool = True


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
def make_loader(ds: Dataset, cfg: TransferConfig, env: DistEnv, *, epoch: int | None = None) -> DataLoader:
    """Train loader for `epoch` (order a pure function of seed and epoch) or, with epoch None, an evaluation
    loader whose shards cover every sample exactly once over all ranks."""
    gen = None if epoch is None else epoch_generator(cfg.seed, epoch, env.rank)
    if epoch is None:
        sampler = ShardSampler(len(ds), env)
    elif env.distributed:
        sampler = DistributedSampler(ds, env.world_size, env.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = torch.utils.data.RandomSampler(ds, generator=gen)
    # -j workers, pinned memory and a deeper prefetch on CUDA; the validation loader is iterated every epoch,
    # so its workers stay alive between epochs
    return DataLoader(ds, batch_size=max(1, cfg.batch_size // env.world_size), sampler=sampler, generator=gen,
                      **loader_settings(env.device, cfg.workers, reused=epoch is None))


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
                          f"{cfg.dataset} is read from image files: pass --pipeline pil or auto")
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

    def __init__(self, splits: Splits, cfg: TransferConfig, env: DistEnv) -> None:
        batch = max(1, cfg.batch_size // env.world_size)
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
    log = runlog.setup_log(cfg.save_dir, env.is_main)
    try:
        _run(env, cfg, log)
    finally:
        cleanup(env)


def _run(env: DistEnv, cfg: TransferConfig, log) -> None:
    if transfer_results.is_complete(cfg):
        log.info(f"{cfg.save_dir} already holds complete results; nothing to do (--restart runs it again)")
        return
    log.info(f"transfer ({cfg.mode}) on {cfg.dataset}: {env.describe()}")
    if cfg.batch_size % env.world_size:
        log.warning(f"WARNING: --batch_size {cfg.batch_size} is the global batch; {env.world_size} processes "
                    f"take {max(1, cfg.batch_size // env.world_size)} each")
    late = [m for m in cfg.milestones if m >= cfg.epochs] if cfg.scheduler == "multistep" else []
    if late and env.is_main:  # normal for a short trial run with a smaller --epochs, so not an error
        log.warning(f"WARNING: --decreasing_lr milestone(s) {','.join(map(str, late))} at or after --epochs "
                    f"{cfg.epochs} never lower the lr in this run")
    eval_from = cfg.eval_from if cfg.eval_from < cfg.epochs else 0
    if eval_from != cfg.eval_from and env.is_main:  # a short trial of a script that validates late
        log.warning(f"WARNING: --eval_from {cfg.eval_from} is not below --epochs {cfg.epochs}: validating every "
                    "epoch so that the best-SA/RA checkpoints exist")
    pipeline = resolve_pipeline(cfg)
    seed_all(cfg.seed, deterministic=cfg.deterministic)
    splits = None
    if env.is_main or not cfg.download:
        splits = _datasets(cfg, cfg.download)
    if cfg.download:
        barrier(env)  # rank 0 downloads alone; the others then read its files
        splits = splits or _datasets(cfg, False)
    log.info(f"data: {len(splits.train)} train ({cfg.data_number:g} of the split, {cfg.subset}), "
             f"{len(splits.val)} val, {len(splits.test)} test images, {splits.num_classes} classes")
    if splits.test.dataset is splits.val.dataset and list(splits.test.indices) == list(splits.val.indices):
        log.warning("WARNING: no separate test split: the test numbers are measured on the validation images "
                    "that chose the best checkpoints")
    if env.is_main:
        write_indices(os.path.join(cfg.save_dir, INDICES), splits.train_indices)
    data = DeviceData(splits, cfg, env) if pipeline == "device" else None
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
    if cfg.compile:  # in place: names, state_dict and masks stay those of the plain model
        model.compile()
    net = wrap_model(model, env)
    train_attack, test_attack = build_attack(cfg.train_attack), build_attack(cfg.test_attack)
    log.info(f"train on {cfg.train_attack.describe() if cfg.train_attack else 'clean images'}; "
             f"validate SA and RA ({cfg.test_attack.describe()}) from epoch {eval_from}")
    val_loader = data.val if data is not None else make_loader(splits.val, cfg, env)
    title = f"{cfg.mode} transfer to {cfg.dataset} ({cfg.data_number:g}), " + \
        (f"ticket at {100 * info['ticket_sparsity']:.1f}% sparsity" if mask is not None else "dense")
    run_opts = dict(device=env.device, env=env, amp=cfg.amp, channels_last=cfg.channels_last,
                    show_progress=cfg.show_progress)
    for epoch in range(state["epoch"], cfg.epochs):
        start = time.time()
        seed_all(epoch_generator(cfg.seed, epoch, env.rank).initial_seed(), deterministic=cfg.deterministic)
        loader = data.train_epoch(epoch) if data is not None else make_loader(splits.train, cfg, env, epoch=epoch)
        if epoch < cfg.warmup:
            loader = Warmup(loader, optimizer, cfg.lr, cfg.warmup, epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(net, loader, optimizer, attack=train_attack, mask=mask, epoch=epoch,
                                scaler=scaler, **run_opts)
        scheduler.step()
        row = {"epoch": epoch, "lr": lr, "train_loss": stats["loss"], "train_acc": stats["top1"],
               "val_sa": None, "val_ra": None}
        if epoch >= eval_from:
            row["val_sa"] = evaluate(net, val_loader, desc="val SA", **run_opts)["top1"]
            row["val_ra"] = evaluate(net, val_loader, attack=test_attack, desc="val RA", **run_opts)["top1"]
        improved = [k for k in ("sa", "ra") if row[f"val_{k}"] is not None
                    and (state[f"best_{k}"] is None or row[f"val_{k}"] > state[f"best_{k}"])]
        for k in improved:
            state[f"best_{k}"], state[f"best_{k}_epoch"] = row[f"val_{k}"], epoch
        state["epoch"], row["time"] = epoch + 1, time.time() - start
        state["wall_time_s"] += row["time"]
        log.info(f"epoch {epoch}: lr {lr:.4g} train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f} "
                 f"| val SA {pct(row['val_sa'])} RA {pct(row['val_ra'])} | best SA {pct(state['best_sa'])} "
                 f"RA {pct(state['best_ra'])} | {row['time']:.0f}s")
        if env.is_main:
            transfer_state.save_epoch(cfg, model, mask, optimizer, scheduler, scaler, state, row, improved)
            transfer_results.plot_curves(read_jsonl(os.path.join(cfg.save_dir, METRICS)),
                                      os.path.join(cfg.save_dir, CURVES), cfg.mode, title)
        barrier(env)
    test_loader = data.test if data is not None else make_loader(splits.test, cfg, env)
    transfer_results.finish(env, cfg, model, mask, splits, info, state, test_loader, test_attack, log,
                         pipeline=pipeline, fetch=data.test.batch if data is not None else None)


def _datasets(cfg: TransferConfig, download: bool) -> Splits:
    return build_datasets(cfg.dataset, cfg.data, data_number=cfg.data_number, subset=cfg.subset, seed=cfg.seed,
                          image_size=cfg.image_size, resize_size=cfg.resize_size, download=download)
