"""The run skeleton that ticket finding (lottery/) and transfer (transfer/) share: the common settings, the launch
and the rank-0 rule, preparing SAVE_DIR (temp files, --restart, config.json), the worker wrapper, the data
loaders, the per-epoch seeds, the model's compile + DDP wrapping and the metrics trimming on resume."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from infra import checkpoint
from infra import paths
from infra import distributed
from infra import flags
from infra import hardware
from infra import reproducibility
from infra import runlog
from infra import watchdog
from training import savedir, syncbn
from infra.distributed import LAUNCH_GROUP, DistEnv, Launch
from infra.errors import ConfigError, OneLineParser
from infra.flags import REQUIRED, Flag, flag

# ---------------------------------------------------------------------------- flags
# help groups both stages use
GENERAL = "general (the original's flags)"
SPEED = "data, speed and safety"


def progress_from_freq(text: str) -> bool:
    """The original's -p/--print_freq N: progress lines on for N > 0, off for 0."""
    try:
        return int(text) > 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def optional_path(text: str) -> str | None:
    """A path flag where '' or none means no file (a dense model, a random init, no checkpoint)."""
    return None if text.strip() in ("", "none", "None") else text


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The settings both stages share (a stage's config subclasses it): where the run goes, its seed, input size,
    precision, kernels, and the safety switches. Each field is its flag (infra.flags)."""
    save_dir: str = flag("--save_dir", REQUIRED, "where the run's files go", group=GENERAL, metavar="DIR",
                         result=False)
    seed: int = flag("--seed", 1, "seed of data order, augmentation and attack starts", group=GENERAL, type=int)
    image_size: int = flag("--image-size", 224, "train crop / eval centre crop", group=SPEED, type=int)
    resize_size: int = flag("--resize-size", 256, "eval resize before the centre crop", group=SPEED, type=int)
    small_input: bool = flag("--small-input", False, "3x3 stride-1 stem without max-pool (32 px images)", group=SPEED)
    amp: str | None = flag("--amp", None, "mixed precision (GPU only)", group=SPEED, choices=("bf16", "fp16"))
    fused_sgd: bool = flag("--fused-sgd", True, "one fused SGD kernel per step: the loop's update up to the last bit",
                           group=SPEED)
    deterministic: bool = flag("--deterministic", False, "deterministic kernels and cuBLAS (slower; exact resume "
                               "except ops PyTorch warns about)", group=SPEED)
    tf32: bool = flag("--tf32", True, "TF32 tensor cores for fp32 convolutions on Ampere+ GPUs (cuDNN's default); "
                      "--no-tf32 computes them in full fp32, as the original's PyTorch 1.5 did", group=SPEED)
    sync_bn: bool = flag("--sync-bn", False, "with several processes, BatchNorm statistics over the global batch "
                         "(SyncBatchNorm), so training and the train-mode attack see the whole batch as on one "
                         "device; without it each process normalises its own share", group=LAUNCH_GROUP)
    compile: bool = flag("--compile", False, "torch.compile the model in place (GPU; slower on CPU; changes the "
                         "last bits)", group=SPEED)
    workers: int = flag("-j --workers", 4, "data loading workers per process", group=SPEED, type=int, result=False)
    show_progress: bool = flag(
        "--progress", True, "in-epoch progress lines", group=SPEED, result=False,
        also=[Flag(("-p", "--print_freq", "--print-freq"), "the original's spelling: N > 0 shows the progress "
                   "lines, 0 = --no-progress", type=progress_from_freq, metavar="N")])
    trust_pickle: bool = flag("--trust-pickle", False, "allow full unpickling of the --init, ticket or checkpoint "
                              "files you name (trust them)", group=SPEED, result=False)
    tensorboard: bool = flag("--tensorboard", False, "also write each epoch's metrics and compute ledger as "
                             "TensorBoard scalars in SAVE_DIR/tensorboard (needs the optional tensorboard package)",
                             group=GENERAL, result=False)
    restart: bool = flag("--restart", False, "start over: delete the earlier run's files in SAVE_DIR (checkpoints, "
                         "tickets, metrics) and its config.json", group=SPEED, result=False)

    def __post_init__(self) -> None:
        checks = [
            (not self.tensorboard or tensorboard_installed(), "--tensorboard needs the optional tensorboard "
             "package, which is not installed: pip install tensorboard, or drop --tensorboard"),
            (self.workers >= 0, f"--workers {self.workers} must be at least 0"),
            (self.image_size >= 1 and self.resize_size >= 1, "--image-size and --resize-size must be >= 1"),
            (self.amp in (None, "bf16", "fp16"), f"--amp must be bf16 or fp16, got {self.amp!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def tensorboard_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("tensorboard") is not None


class RecipeParser(OneLineParser):
    """An entry point's parser that puts the flags of `--recipe NAME` before the command's own."""

    def __init__(self, recipes: Mapping[str, flags.Recipe], **kwargs) -> None:
        super().__init__(**kwargs)
        self.recipes = dict(recipes)
        if self.recipes:
            self.add_argument("--recipe", choices=list(self.recipes), metavar="NAME",
                              help=flags.recipe_help(self.recipes).replace("%", "%%"))

    def parse_known_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        try:
            expanded = flags.with_recipe(argv, self.recipes)
        except ValueError as e:
            self.error(str(e))
        parsed, rest = super().parse_known_args(expanded, namespace)
        if getattr(parsed, "recipe", None) is not None and expanded == argv:  # argparse took an abbreviation
            self.error(f"--recipe {parsed.recipe}: write --recipe in full")
        return parsed, rest


def parser(description: str, *settings: type, skip: Iterable[str] = (),
           recipes: Mapping[str, flags.Recipe] | None = None) -> OneLineParser:
    """The command line of an entry point: `--recipe` (with `recipes`), then the flags of each settings dataclass
    (a stage's config, then distributed.Launch), less the fields in `skip`."""
    p = RecipeParser(recipes or {}, description=description)
    for cls in settings:
        flags.add_flags(p, cls, skip=skip)
    return p


def settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    """A stage's config from its parsed flags, checked (by the config itself, and --amp against this machine)."""
    cfg = flags.from_args(cls, args)
    hardware.check_amp(cfg.amp)
    return cfg


def launch_from_args(args: argparse.Namespace) -> Launch:
    """The launch flags, once this node is known to run them: a GPU it was given works (else NodeError, exit 3,
    before SAVE_DIR is touched)."""
    opts = flags.from_args(Launch, args)
    watchdog.stall_bound()  # a bad DOUBLEWIN_STALL_S is one line before anything starts
    hardware.check_gpus_given(os.environ, opts.gpu)
    return opts


# ---------------------------------------------------------------------------- before the workers start
first_process = distributed.first_process  # the rank-0 rule before ranks exist, the same for both stages
folder = savedir.folder  # SAVE_DIR's RunFolder for this process: every write of the run's files goes through it


def claim_save_dir(save_dir: str) -> None:
    """On the first process: SAVE_DIR exists and is writable, and this process holds its lease for the whole run
    (`savedir.hold_save_dir`); a second process on it refuses with one line. Processes that
    --multiprocessing-distributed spawns run under the parent's lease."""
    savedir.writable_dir(save_dir)
    savedir.hold_save_dir(save_dir)


def prepare_save_dir(cfg: RunSettings, opts: Launch, *, clear: Callable[[str], list[str]], started: bool) -> None:
    """On the first process, after `claim_save_dir` and before any worker writes: temp files of a killed write
    gone, --restart's removal of the earlier run's files (before config.json changes, so that a kill in between never
    pairs old files with new settings), then config.json checked against the run's settings: the fields that can
    change a result must agree. A folder without progress (`started` false: e.g. an attempt that stopped at a bad
    flag) takes the new settings."""
    savedir.remove_temp_files(cfg.save_dir)
    if cfg.restart:
        removed = clear(cfg.save_dir)
        print(f"--restart: removed {len(removed)} files of the earlier run in {cfg.save_dir}", flush=True)
    config = {**dataclasses.asdict(cfg), "launch": dataclasses.asdict(opts)}
    savedir.check_config(cfg.save_dir, config, restart=cfg.restart or not started,
                         free=flags.result_free(type(cfg)) | {"launch"})


def start(worker: Callable[[DistEnv, Any], None], cfg: Any, opts: Launch) -> str:
    """Run `worker(env, cfg)` in the process layout the launch flags ask for; returns its description."""
    return distributed.launch(worker, cfg, opts)


def in_worker(body: Callable[[DistEnv, Any], None], env: DistEnv, cfg: Any) -> None:
    """One process of a run: the project log's handlers (stdout, and SAVE_DIR/log.txt on rank 0), the progress
    watchdog (DOUBLEWIN_STALL_S), the run's kernel settings (--deterministic, --tf32) for its duration, and the
    process group closed however the body ends."""
    runlog.setup_log(cfg.save_dir, env.is_main)
    log = os.path.join(cfg.save_dir, paths.LOG) if env.is_main else None
    try:
        hardware.check_amp(cfg.amp, env.device)  # this rank's own GPU: a node may mix cards
        with watchdog.watching(cfg.save_dir if env.is_main else None, log), \
                reproducibility.kernel_mode(deterministic=cfg.deterministic, tf32=cfg.tf32):
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
        converted = syncbn.convert(model, env.device)
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
    `metrics_row`): rows of an epoch that crashed between its row and its checkpoint go, and so does a torn last
    line."""
    path = os.path.join(save_dir, paths.METRICS)
    if os.path.exists(path):
        rows = [r for r in checkpoint.read_jsonl(path)
                if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] < done]
        folder(save_dir).write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
