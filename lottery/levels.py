"""The IMP / A-IMP levels loop: level k trains mask k (sparsity 1 - (1 - rate)^k) from the rewound init for
`prune_epoch` epochs, then prunes `rate` of its survivors into mask k + 1; re-running resumes where it stopped."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch.utils.data import DataLoader

from infra import checkpoint as files
from infra import paths
import dataset
from infra import distributed
from training import engine
from training import ledger
from training.board import Board
from infra import hardware
import models
from training import optimizer as optimizer_lib
import pruning_utils
from infra import reproducibility
from training import runner
from training import weights
from attacks import build_attack
from infra.distributed import DistEnv
from infra.runlog import LOGGER
from lottery import criteria
from lottery.config import IMPConfig
from lottery import robust_val
from lottery.early_bird import Watch
from lottery.level_files import write_level_files
from lottery.state import Position, checkpoint_dict, find_resume, level_of, restore
from pruning_utils import Mask

log = logging.getLogger(LOGGER)


# ---------------------------------------------------------------------------- masks
def prune(net: torch.nn.Module, mask: Mask, rate: float, cfg: IMPConfig, level: int,
          batches: criteria.Batches | None = None) -> Mask:
    """Remove `rate` of the weights `mask` keeps, judged by --prune-method's criterion on the weights `net` holds
    now (with a generator seeded by (--seed, level) and the level's training batches, `batches`, where known)."""
    context = criteria.Context(reproducibility.level_generator(cfg.seed, level), batches)
    return criteria.get(cfg.prune_method).select(net, mask, rate, context)


def _agree(mask: Mask, env: DistEnv, what: str) -> str:
    """Every rank fingerprints the mask it holds; all must be equal (a real check that broadcasting worked)."""
    digest = pruning_utils.mask_digest(mask)
    table = torch.zeros(env.world_size, 8, dtype=torch.int64, device=env.device)
    table[env.rank] = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.int64)
    rows = [bytes(r).hex() for r in distributed.all_reduce_sum(table, env).tolist()]
    if len(set(rows)) != 1:
        raise RuntimeError(f"ranks hold different masks for {what}: digests by rank {rows}")
    log.info(f"{what}: mask digest {digest} on rank(s) {', '.join(map(str, range(env.world_size)))}")
    return digest


def begin_level(net: torch.nn.Module, init_state: dict, mask: Mask, level: int, cfg: IMPConfig, env: DistEnv,
                rate: float | None = None, batches: criteria.Batches | None = None) -> Mask:
    """Mask `level` pruned (on rank 0, then broadcast) from the weights `net` holds and the previous mask;
    the survivors are rewound to `init_state` and rank 0 writes the level's ticket and sparsity files."""
    rate = cfg.rate if rate is None else rate
    new = distributed.broadcast_mask(prune(net, mask, rate, cfg, level, batches) if env.is_main else mask, env)
    digest = _agree(new, env, f"level {level}")
    pruning_utils.rewind(net, init_state, new)
    if env.is_main:
        write_level_files(cfg, level, new, digest, pruning_utils.weights_digest(init_state, new))
    log.info(f"level {level}: sparsity {100 * pruning_utils.sparsity(new):.2f}% of the conv weights "
             f"({cfg.ticket_family}), survivors rewound to the init")
    return new


# ---------------------------------------------------------------------------- data and model
def _loaders(cfg: IMPConfig, env: DistEnv, splits: dataset.Splits):
    batch = runner.per_rank_batch(cfg.batch_size, env, flag="-b")
    val = runner.eval_loader(splits.val, batch, env=env, workers=cfg.workers)
    robust = robust_val.build(cfg.robust_val, cfg.robust_val_images, cfg.attack.eps if cfg.attack else 0.0,
                              cfg.attack_loss, splits.val, batch, env, cfg.workers)
    if robust is not None:
        log.info(f"robust validation each epoch: {robust_val.describe(robust.attack, robust.images)}")

    def train(epoch: int) -> DataLoader:
        return runner.train_loader(splits.train, batch, seed=cfg.seed, epoch=epoch, env=env, workers=cfg.workers)
    return train, val, robust


def _build_model(cfg: IMPConfig, num_classes: int, env: DistEnv) -> tuple[torch.nn.Module, dict]:
    mean, std, loaded = dataset.IMAGENET_MEAN, dataset.IMAGENET_STD, None
    if cfg.init:
        loaded = weights.read_weights(cfg.init, trusted=cfg.trust_pickle)
        if loaded.mean is not None:
            mean, std = loaded.mean, loaded.std
            log.info(f"normalisation from the init file: mean {mean} std {std}")
    net = models.build(cfg.arch, num_classes, small_input=cfg.small_input, mean=mean, std=std)
    if loaded is not None:
        log.info(weights.load_into(net, loaded, head="strict"))
        if loaded.mask is not None:
            log.warning(f"{cfg.init} carries a pruning mask: its masked weights are the init; "
                        "to continue that run instead, pass it to --resume")
    elif not cfg.resume:
        log.warning(f"no --init: IMP starts from the random initialisation of {cfg.arch} (seed {cfg.seed})")
    init_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return net.to(env.device), init_state


def _sgd(model: torch.nn.Module, cfg: IMPConfig, state: dict | None = None, path: str = "") -> torch.optim.SGD:
    settings = optimizer_lib.SGDSettings(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.fused_sgd)
    return optimizer_lib.make_sgd(model, settings, state, path)


# ---------------------------------------------------------------------------- the run
def worker(env: DistEnv, cfg: IMPConfig) -> None:
    """One process of an IMP run (module level, so torch.multiprocessing.spawn can pickle it)."""
    runner.in_worker(_run, env, cfg)


def _run(env: DistEnv, cfg: IMPConfig) -> None:
    log.info(f"process layout: {env.describe()}" + ("" if hardware.cuda_usable() else " (no GPU in use)"))
    reproducibility.seed_all(cfg.seed)
    splits = dataset.build_datasets("imagenet", cfg.data, dataset.DataFraction(cfg.data_number, cfg.subset, cfg.seed),
                                    image_size=cfg.image_size, resize_size=cfg.resize_size)
    log.info(f"data {cfg.data}: {len(splits.train)} train" + (f" ({cfg.data_number:g} of the split, {cfg.subset})"
             if cfg.data_number < 1 else "") + f" / {len(splits.val)} val images, {splits.num_classes} classes")
    if env.is_main and cfg.data_number < 1:  # the data diet's images, as transfer records its fraction's
        dataset.write_indices(os.path.join(cfg.save_dir, paths.INDICES), splits.train_indices)
    net, init_state = _build_model(cfg, splits.num_classes, env)
    cl = cfg.channels_last if cfg.channels_last is not None else env.device.type == "cuda"
    if cl:
        net.to(memory_format=torch.channels_last)
    if cfg.omp_sparsity is not None:
        level = cfg.omp_level or 1
        begin_level(net, init_state, pruning_utils.full_mask(net), level, cfg, env, rate=cfg.omp_sparsity,
                    batches=lambda: _loaders(cfg, env, splits)[0](0))
        log.info(f"one-shot ticket: {paths.imp_ticket(cfg.save_dir, level)}")
        return
    train_loader, val_loader, robust = _loaders(cfg, env, splits)
    attack = build_attack(cfg.attack, cfg.attack_loss)
    if cfg.attack is not None:
        log.info(f"training attack: {cfg.attack.describe()}")
    path, obj = find_resume(cfg, env, own=not cfg.evaluate)
    if cfg.evaluate:
        mask = None if obj is None else restore(net, obj, path, init_state)[0]
        return _evaluate_only(env, cfg, net, val_loader, mask, path or cfg.init, cl)
    at = _starting_point(net, init_state, cfg, env, path, obj, train_loader)
    if env.is_main:
        runner.truncate_metrics(cfg.save_dir, at.done)
    model = runner.wrap(net, env, compile=cfg.compile, sync_bn=cfg.sync_bn)
    optimizer = _sgd(model, cfg, at.optimizer, path or "")
    scaler = optimizer_lib.make_scaler(cfg.amp, env.device, obj.get("scaler") if at.optimizer is not None else None)
    board = Board(cfg.save_dir, files.read_jsonl(os.path.join(cfg.save_dir, paths.METRICS)), at.done) \
        if cfg.tensorboard and env.is_main else None
    step = engine.Step(env, amp=cfg.amp, channels_last=cl, attack=attack, show_progress=cfg.show_progress,
                       flops=ledger.FlopTable(net))  # each epoch runs it under its level's mask
    levels = Levels(cfg, net, model, train_loader, val_loader, train=step, scaler=scaler, board=board, robust=robust)
    while at.level <= cfg.levels:
        while at.done < at.level * cfg.prune_epoch:  # an early-bird level that stops counts all its epochs done
            levels.epoch(at.done, at, optimizer)
        at.mask = begin_level(net, at.init_state, at.mask, at.level + 1, cfg, env,
                              batches=lambda: train_loader(at.done))
        at.level, at.best, optimizer, at.watch = at.level + 1, None, _sgd(model, cfg), new_watch(cfg)
    if board is not None:
        board.close()
    log.info(f"IMP done: {cfg.levels} levels trained; tickets 1..{cfg.levels + 1} in {cfg.save_dir}")


@dataclass(frozen=True)
class Levels:
    """The fixed pieces of a ticket-finding run's epochs: `model` trains (compiled, DDP-wrapped), `net` is what
    files hold; `train` is the training step (its ranks and attack; the level's mask is added per epoch)."""
    cfg: IMPConfig
    net: torch.nn.Module
    model: torch.nn.Module
    train_loader: Callable[[int], DataLoader]
    val_loader: DataLoader
    train: engine.Step
    scaler: torch.amp.GradScaler | None
    board: Board | None = None  # --tensorboard (rank 0)
    robust: robust_val.RobustVal | None = None  # --robust-val

    def epoch(self, epoch: int, at: Position, optimizer: torch.optim.Optimizer) -> None:
        """Train and validate one epoch of level `at.level`, then (rank 0) its metrics row, best and checkpoint
        files; `at` moves on by one epoch."""
        cfg, env = self.cfg, self.train.env
        # every epoch's randomness (augmentation, attack starts) is a pure function of (seed, epoch, rank)
        reproducibility.seed_epoch(cfg.seed, epoch, env.rank)
        start = time.time()
        tr = engine.train_one_epoch(self.model, self.train_loader(epoch), optimizer,
                                    replace(self.train, mask=at.mask), scaler=self.scaler, epoch=epoch,
                                    desc=f"level {at.level} epoch {epoch + 1}")
        va = engine.evaluate(self.model, self.val_loader, replace(self.train, attack=None), desc="val")
        ra, passes = self.robust.measure(self.model, self.train) if self.robust else ({"val_ra": None}, [])
        at.done = epoch + 1
        is_best = at.best is None or va["top1"] > at.best  # the first epoch of a level is always its best so far
        at.best = va["top1"] if is_best else at.best
        row = runner.metrics_row(epoch, optimizer.param_groups[0]["lr"], tr, level=at.level,
                                 sparsity=pruning_utils.sparsity(at.mask), train_top5=tr["top5"],
                                 val_loss=va["loss"], val_sa=va["top1"], val_sa_top5=va["top5"],
                                 best_val_sa=at.best, time=time.time() - start, **ra)
        row["cost"] = ledger.epoch_cost(tr, [va, *passes], row["time"], device=env.device, devices=env.world_size,
                                        amp=cfg.amp)
        row["mask_distance"] = None  # random pruning: its masks do not follow the weights
        if at.watch is not None:
            row["mask_distance"], stop = self.watch(at)
            if cfg.early_bird is not None:
                row["early_bird_stop"] = stop
        if env.is_main:  # metrics, then best, then the checkpoint: a crash in between replays this epoch
            runner.folder(cfg.save_dir).append_row(os.path.join(cfg.save_dir, paths.METRICS), row)
            state = checkpoint_dict(self.net, at, optimizer, self.scaler, cfg)
            if is_best:
                runner.folder(cfg.save_dir).save(state, paths.imp_best(cfg.save_dir, at.level))
            runner.folder(cfg.save_dir).save(state, paths.imp_checkpoint(cfg.save_dir, at.level))
            if self.board is not None:
                self.board.add(row)
        log.info(f"level {at.level} epoch {at.done}/{cfg.epochs}: train loss {tr['loss']:.4f} top1 {tr['top1']:.2f} | "
                 f"val top1 {va['top1']:.2f} top5 {va['top5']:.2f} (best {at.best:.2f})" + (
                     f" | val slice SA {ra['val_slice_sa']:.2f} RA {ra['val_ra']:.2f}" if passes else "")
                 + f" | {row['time']:.0f}s")
        if passes and robust_val.collapsed(at.val_ra, ra["val_ra"]):
            log.warning(f"WARNING: level {at.level} epoch {at.done}: robust accuracy on the validation slice fell "
                        f"from {at.val_ra:.2f} to {ra['val_ra']:.2f} (clean {ra['val_slice_sa']:.2f}): adversarial "
                        "training may have stopped working (catastrophic overfitting, FGSM-RS's known failure)")
        at.val_ra = ra["val_ra"]

    def watch(self, at: Position) -> tuple[float | None, bool]:
        """After an epoch: the mask the level would prune to now joins the level's window; with --early-bird,
        when the level stops (rank 0 decides, every rank follows), all its epochs count as done. Returns (the
        distance to the previous epoch's mask, whether the level stops)."""
        cfg, env = self.cfg, self.train.env
        candidate = prune(self.net, at.mask, cfg.rate, cfg, at.level, lambda: self.train_loader(at.done))
        previous, stop = at.watch.observe(candidate, at.mask)
        if cfg.early_bird is None:
            return previous, False
        stop = bool(distributed.broadcast_(torch.tensor(int(stop), device=env.device), env).item())
        if stop:
            trained = at.done - (at.level - 1) * cfg.prune_epoch
            at.done = at.level * cfg.prune_epoch
            log.info(f"level {at.level}: early-bird ticket after {trained} of {cfg.prune_epoch} epochs (the last "
                     f"{cfg.early_bird_window} masks within {cfg.early_bird:g} of each other): pruning now")
        return previous, stop


def _starting_point(net, init_state: dict, cfg: IMPConfig, env: DistEnv, path: str | None,
                    obj: dict | None, train_loader: Callable[[int], DataLoader]) -> Position:
    """Where the run starts: level 1 pruned from the init, or the checkpoint's level and epoch (a finished level
    moves on to the next one, pruned from its trained weights), with the checkpoint's optimizer state and best
    val SA when the level goes on."""
    if obj is None:
        return Position(begin_level(net, init_state, pruning_utils.full_mask(net), 1, cfg, env,
                                    batches=lambda: train_loader(0)), init_state, 1, watch=new_watch(cfg))
    level, done = level_of(obj, path, cfg)
    mask, init_state = restore(net, obj, path, init_state)
    log.info(f"resuming from {path}: level {level}, {done} of {cfg.epochs} epochs done")
    if env.is_main and not os.path.exists(paths.imp_ticket(cfg.save_dir, level)):  # e.g. --resume elsewhere
        write_level_files(cfg, level, mask, pruning_utils.mask_digest(mask),
                          pruning_utils.weights_digest(init_state, mask))
    if done == level * cfg.prune_epoch:
        return Position(begin_level(net, init_state, mask, level + 1, cfg, env, batches=lambda: train_loader(done)),
                        init_state, level + 1, done, watch=new_watch(cfg))
    best, watch = obj.get("best_acc1"), new_watch(cfg)
    if watch is not None:  # "early_bird": the key before every run kept its window
        watch.load(obj.get("candidate_masks", obj.get("early_bird")) or [], env.device, path)
    return Position(mask, init_state, level, done, None if best is None else float(best), obj.get("optimizer"),
                    watch)


def new_watch(cfg: IMPConfig) -> Watch | None:
    """A level's empty window of candidate masks: --early-bird's, else the previous epoch's alone (for the
    metrics rows' `mask_distance`); None for a criterion whose masks do not follow the weights (random)."""
    if not criteria.get(cfg.prune_method).early_bird:
        return None
    return Watch(cfg.early_bird, cfg.early_bird_window if cfg.early_bird is not None else 2)


def _evaluate_only(env: DistEnv, cfg: IMPConfig, net, val_loader, mask: Mask | None, source: str | None,
                   cl: bool) -> None:
    step = engine.Step(env, amp=None, channels_last=cl, show_progress=cfg.show_progress)  # fp32, as trained or not
    clean = engine.evaluate(net, val_loader, step, desc="eval")
    out = {"source": source, "sparsity": 0.0 if mask is None else pruning_utils.sparsity(mask),
           "sa_top1": clean["top1"], "sa_top5": clean["top5"], "loss": clean["loss"], "n": clean["n"]}
    if cfg.attack is not None:
        robust = engine.evaluate(net, val_loader, replace(step, attack=build_attack(cfg.attack, cfg.attack_loss)),
                                 desc="eval (attack)")
        out.update(ra_top1=robust["top1"], attack=cfg.attack.describe())
    if env.is_main:
        runner.folder(cfg.save_dir).write_json(os.path.join(cfg.save_dir, paths.EVALUATION), out)
    log.info(f"evaluated {source or 'the random init'}: SA top1 {out['sa_top1']:.2f} top5 {out['sa_top5']:.2f}"
             + (f", RA {out['ra_top1']:.2f} ({out['attack']})" if "ra_top1" in out else ""))
