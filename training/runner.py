"""The run skeleton that ticket finding (lottery/) and transfer (transfer/) share: the common flags, the launch
and the rank-0 rule, preparing SAVE_DIR (temp files, --restart, config.json), the worker wrapper, the data
loaders, the per-epoch seeds, the model's compile + DDP wrapping and the metrics trimming on resume."""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from infra import checkpoint
from infra import distributed
from infra import hardware
from infra import reproducibility
from infra import runlog
from training import savedir
from infra.distributed import DistEnv, Launch
from infra.errors import ConfigError

# settings added after the first release, with the behaviour of the runs started before them, which did not
# record them (savedir.check_config): such a run continues with `--no-fused-sgd` (TF32: cuDNN's default, on)
IMPLIED = {"fused_sgd": False, "compile": False, "tf32": True}
# config.json keys that may differ between runs of one experiment: where things are, how the run reports
VOLATILE = ("data", "save_dir", "workers", "show_progress", "trust_pickle")
# how each epoch's global RNG is seeded (epoch_seed), recorded in config.json; no flag selects another way
EPOCH_SEEDS = "independent"


# ---------------------------------------------------------------------------- flags
def add_speed_flags(g: argparse._ActionsContainer, *, channels_last: bool | None) -> None:
    """Input size, precision, memory format and kernels; `channels_last` is the entry point's default."""
    g.add_argument("--image-size", default=224, type=int, help="train crop / eval centre crop")
    g.add_argument("--resize-size", default=256, type=int, help="eval resize before the centre crop")
    g.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem without max-pool (32 px images)")
    g.add_argument("--amp", default=None, choices=("bf16", "fp16"), help="mixed precision (GPU only)")
    g.add_argument("--channels-last", default=channels_last, action=argparse.BooleanOptionalAction,
                   help="channels_last memory format" + (" (default: on with a GPU)" if channels_last is None else ""))
    g.add_argument("--fused-sgd", default=True, action=argparse.BooleanOptionalAction,
                   help="one fused SGD kernel per step: the loop's update up to the last bit")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels and cuBLAS (slower; exact resume except ops PyTorch warns about)")
    g.add_argument("--tf32", default=True, action=argparse.BooleanOptionalAction,
                   help="TF32 tensor cores for fp32 convolutions on Ampere+ GPUs (cuDNN's default); --no-tf32 "
                        "computes them in full fp32, as the original's PyTorch 1.5 did")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model in place (GPU; slower on CPU; changes the last bits)")
    g.add_argument("-j", "--workers", default=4, type=int, help="data loading workers per process")


def add_safety_flags(g: argparse._ActionsContainer, *, restart: str) -> None:
    g.add_argument("--restart", action="store_true", help=restart)
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of the --init / ticket / --resume files you trust")


def add_launch_flags(g: argparse._ActionsContainer) -> None:
    """The original's distributed flags (torchrun works too)."""
    g.add_argument("--world-size", default=-1, type=int,
                   help="number of nodes (processes without --multiprocessing-distributed)")
    g.add_argument("--rank", default=-1, type=int,
                   help="node rank (process rank without --multiprocessing-distributed)")
    g.add_argument("--dist-url", default="env://", help="url of the process group rendezvous")
    g.add_argument("--dist-backend", default="nccl", help="nccl (gloo is used when no GPU is visible)")
    g.add_argument("--gpu", default=None, type=int, help="GPU id for a one-process run")
    g.add_argument("--multiprocessing-distributed", action="store_true",
                   help="one process per GPU on this node (one CPU process when no GPU is visible)")


def common_settings(args: argparse.Namespace) -> dict:
    """The config fields both stages take from the shared flags, checked once."""
    hardware.check_amp(args.amp)
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers} must be at least 0")
    return dict(save_dir=args.save_dir, seed=args.seed, workers=args.workers, image_size=args.image_size,
                resize_size=args.resize_size, small_input=args.small_input, amp=args.amp,
                channels_last=args.channels_last, fused_sgd=args.fused_sgd, compile=args.compile,
                deterministic=args.deterministic, tf32=args.tf32, trust_pickle=args.trust_pickle)


def launch_from_args(args: argparse.Namespace) -> Launch:
    return Launch(gpu=args.gpu, dist_url=args.dist_url, dist_backend=args.dist_backend, world_size=args.world_size,
                  rank=args.rank, multiprocessing_distributed=args.multiprocessing_distributed)


# ---------------------------------------------------------------------------- before the workers start
first_process = distributed.first_process  # the rank-0 rule before ranks exist, the same for both stages


def claim_save_dir(save_dir: str) -> None:
    """On the first process: SAVE_DIR exists and is writable, and this process holds its lock for the whole run
    (the OS releases it when the process ends, however it ends); a second process on it refuses with one line.
    Processes that --multiprocessing-distributed spawns run under the parent's lock."""
    savedir.writable_dir(save_dir)
    savedir.hold_save_dir(save_dir)


def prepare_save_dir(save_dir: str, config: dict, *, restart: bool, clear: Callable[[str], list[str]],
                     started: bool, volatile: Iterable[str], implied: dict) -> None:
    """On the first process, after `claim_save_dir` and before any worker writes: temp files of a killed write
    gone, --restart's removal of the earlier run's files (before config.json changes, so that a kill in between never
    pairs old files with new settings), then config.json checked against the run's settings (with `epoch_seeds`,
    the seeding policy). A folder without progress (`started` false: e.g. an attempt that stopped at a bad flag)
    takes the new settings."""
    savedir.remove_temp_files(save_dir)
    if restart:
        removed = clear(save_dir)
        print(f"--restart: removed {len(removed)} files of the earlier run in {save_dir}", flush=True)
    savedir.check_config(save_dir, {**config, "epoch_seeds": EPOCH_SEEDS}, restart=restart or not started,
                         volatile=(*VOLATILE, *volatile), implied={**IMPLIED, **implied}, fixed=("epoch_seeds",))


def start(worker: Callable[[DistEnv, Any], None], cfg: Any, opts: Launch) -> str:
    """Run `worker(env, cfg)` in the process layout the launch flags ask for; returns its description."""
    return distributed.launch(worker, cfg, opts)


def in_worker(body: Callable[[DistEnv, Any], None], env: DistEnv, cfg: Any) -> None:
    """One process of a run: the project log's handlers (stdout, and SAVE_DIR/log.txt on rank 0), the run's
    kernel settings (--deterministic, --tf32) for its duration, and the process group closed however the body
    ends."""
    runlog.setup_log(cfg.save_dir, env.is_main)
    try:
        hardware.check_amp(cfg.amp, env.device)  # this rank's own GPU: a node may mix cards
        with reproducibility.kernel_mode(deterministic=cfg.deterministic, tf32=cfg.tf32):
            body(env, cfg)
    finally:
        distributed.cleanup(env)


# ---------------------------------------------------------------------------- data
def loader_settings(device: torch.device, workers: int | None = None, *, reused: bool = False) -> dict:
    """DataLoader keyword arguments that keep a device fed from a host-side (PIL) pipeline: every core a worker
    by default, pinned memory and a deeper prefetch on CUDA, and, for a loader object iterated again every
    epoch (`reused`, e.g. validation), workers kept alive between epochs."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    out: dict = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        out.update(persistent_workers=reused, prefetch_factor=4 if device.type == "cuda" else 2)
    return out


def per_rank_batch(batch_size: int, env: DistEnv, *, flag: str) -> int:
    """The batch of one process: the global `batch_size` split over the ranks."""
    per_rank = batch_size // env.world_size
    if per_rank < 1:
        raise ConfigError(f"{flag} {batch_size} is the global batch: it must be at least the {env.world_size} "
                          "processes")
    if batch_size % env.world_size and env.is_main:
        logging.getLogger(runlog.LOGGER).warning(f"WARNING: {flag} {batch_size} is the global batch; "
                                                 f"{env.world_size} processes take {per_rank} each")
    return per_rank


def train_loader(ds: Dataset, batch: int, *, seed: int, epoch: int, env: DistEnv, workers: int) -> DataLoader:
    """The training loader of one epoch, made fresh (no persistent workers): its order and its workers' seeds
    are a pure function of (seed, epoch, rank), so a resumed run sees exactly the batches of an uninterrupted one."""
    g = reproducibility.epoch_generator(seed, epoch, env.rank)
    if env.distributed:
        sampler = DistributedSampler(ds, env.world_size, env.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(ds, generator=g)
    return DataLoader(ds, batch_size=batch, sampler=sampler, generator=g, **loader_settings(env.device, workers))


def eval_loader(ds: Dataset, batch: int, *, env: DistEnv, workers: int) -> DataLoader:
    """An evaluation loader whose shards cover every sample exactly once over all ranks; it is iterated every
    epoch, so its workers stay alive between epochs."""
    return DataLoader(ds, batch_size=batch, sampler=distributed.ShardSampler(len(ds), env),
                      **loader_settings(env.device, workers, reused=True))


# ---------------------------------------------------------------------------- model, metrics
def wrap(model: torch.nn.Module, env: DistEnv, *, compile: bool, sync_bn: bool = False) -> torch.nn.Module:
    """The network the loop trains: with `sync_bn` its BatchNorm layers become SyncBatchNorm in place (statistics
    over the global batch; same parameters and state_dict keys), compiled in place (names, state_dict and masks
    stay the plain model's), then wrapped in DDP when there are several ranks. Files keep being written from
    `model`."""
    if sync_bn:
        if env.distributed and env.device.type != "cuda":
            raise ConfigError("--sync-bn needs one GPU per process (SyncBatchNorm syncs CUDA tensors): drop it here")
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert converted is model  # a ResNet's BatchNorms are children: replaced in place, the optimizer keeps them
    if compile:
        model.compile()
    return distributed.wrap_model(model, env)


def metrics_row(epoch: int, lr: float, train: dict, **more) -> dict:
    """One metrics.jsonl row, in the schema both stages write (a stage adds its own keys in `more`):

    - `epoch`: the epoch's number, counted from 0 in both stages, as --eval_from, the --decreasing_lr milestones
      and the original's transfer printouts count them;
    - `lr`: the learning rate the epoch started with;
    - `train_loss`, `train_acc`: mean loss and top-1 accuracy (%) on the examples trained on (the adversarial
      examples under adversarial training), from `train_one_epoch`'s stats;
    - `val_sa`, `val_ra`: standard and robust accuracy (%) on the validation split, None in an epoch that did
      not measure them (ticket finding validates SA only);
    - `time`: the epoch's seconds, training and validation.
    """
    return {"epoch": epoch, "lr": lr, "train_loss": train["loss"], "train_acc": train["top1"], **more}


def truncate_metrics(save_dir: str, done: int) -> None:
    """Keep the metrics.jsonl rows of the `done` completed epochs only (rows number epochs from 0, see
    METRICS_ROW): rows of an epoch that crashed between its row and its checkpoint go, and so does a torn last
    line."""
    path = os.path.join(save_dir, checkpoint.METRICS)
    if os.path.exists(path):
        rows = [r for r in checkpoint.read_jsonl(path)
                if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] < done]
        checkpoint.atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
