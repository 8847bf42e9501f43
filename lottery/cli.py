"""The command line of main_imp_adv.py / main_imp_std.py: the original's flags plus ours, converted once into
an `imp_config.IMPConfig`, config.json checked, and the run launched in the process layout the flags ask for."""
from __future__ import annotations

import argparse
import dataclasses


import attacks
import checkpoint
import distributed
import hardware
from lottery import config as imp_config
from lottery import levels as imp_levels
from lottery import state as imp_state
import models
import runlog
from errors import ConfigError, OneLineParser, UserError


def get_args_parser(adversarial: bool) -> argparse.ArgumentParser:
    what = "A-IMP (adversarial training)" if adversarial else "IMP (standard training)"
    p = OneLineParser(
        description=f"{what} on an ImageNet-layout folder: level 1 prunes the pre-trained conv weights by "
                    "magnitude; each level trains --prune_epoch epochs, prunes --rate of the survivors, rewinds "
                    "them to the pre-trained weights. Defaults are the paper's. Re-run the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", metavar="DIR", help="dataset folder: DIR/train/<class>/*, DIR/val/<class>/*")
    p.add_argument("-a", "--arch", default="resnet50", choices=list(models.ARCHS), help="model architecture")
    p.add_argument("-j", "--workers", default=4, type=int, help="data loading workers per process")
    p.add_argument("--epochs", default=570, type=int, help="epochs in all (levels * --prune_epoch)")
    p.add_argument("-b", "--batch-size", default=2048, type=int, help="global batch, split over all processes")
    p.add_argument("--lr", "--learning-rate", default=0.0005, type=float, dest="lr", help="SGD lr (constant)")
    p.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay")
    p.add_argument("-p", "--print-freq", default=10, type=int,
                   help="0 hides the in-epoch progress lines (shown about every 10%% of an epoch otherwise)")
    p.add_argument("--resume", default="", metavar="PATH",
                   help="continue from this checkpoint (ours or the original's <level>-checkpoint.pth.tar); "
                        "without it, re-running the same command resumes from SAVE_DIR")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="evaluate the init (or --resume) on DIR/val, write SAVE_DIR/evaluate.json and stop")
    p.add_argument("--seed", default=1, type=int, help="seed of data order, augmentation and attack starts")
    p.add_argument("--prune_epoch", default=30, type=int, help="epochs per level")
    p.add_argument("--rate", default=0.2, type=float, help="fraction of the surviving conv weights pruned per level")
    p.add_argument("--init", default=None, metavar="PATH", help="pre-trained weights (loaded strictly)")
    p.add_argument("--save_dir", default=None, metavar="DIR", help="where the run's files go (required)")
    if adversarial:
        p.add_argument("--train_eps", default=8 / 255, type=attacks.parse_fraction,
                       help="attack eps as a fraction of the pixel range (8/255 or 0.0314)")
        p.add_argument("--train_step", default=3, type=int, help="PGD steps (pgd only)")
        p.add_argument("--train_gamma", default=16 / 765, type=attacks.parse_fraction,
                       help="PGD step size as a fraction of the pixel range (16/765 = 16/(3*255); pgd only)")
        p.add_argument("--train_randinit", action="store_false",
                       help="turn the attack's random start OFF (the original's flag: random start is on "
                            "by default and passing this flag disables it)")
        p.add_argument("--attack", default="pgd", choices=["pgd", "fgsm"],
                       help="pgd: --train_step steps of --train_gamma; fgsm: 'fast' adversarial training, one "
                            "step of 1.25 * eps (--train_step/--train_gamma do not apply)")
    g = p.add_argument_group("pruning")
    g.add_argument("--prune-method", default="magnitude", choices=list(imp_config.PRUNE_METHODS),
                   help="global magnitude pruning, or random pruning (the paper's baseline)")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--omp-sparsity", type=float, default=None, metavar="S",
                     help="one-shot (OMP): prune the init straight to sparsity S, write 1-ticket.pth.tar, no training")
    one.add_argument("--omp-level", type=int, default=None, metavar="K",
                     help="one-shot (OMP) to the sparsity of level K, 1-(1-rate)^K, written as K-ticket.pth.tar")
    g = p.add_argument_group("data, speed and safety")
    g.add_argument("--image-size", default=224, type=int, help="train crop / eval center crop")
    g.add_argument("--resize-size", default=256, type=int, help="eval resize before the center crop")
    g.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem without max-pool (32 px images)")
    g.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="mixed precision (GPU only)")
    g.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction,
                   help="channels_last memory format (default: on with a GPU)")
    g.add_argument("--fused-sgd", default=True, action=argparse.BooleanOptionalAction,
                   help="fused SGD kernel: faster, the same update up to the last bit (default: on)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels and cuBLAS (slower; exact resume except ops PyTorch warns about)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model in place (GPU; slower on CPU; changes the last bits)")
    g.add_argument("--restart", action="store_true",
                   help="delete this run's level files and metrics in SAVE_DIR and start over")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling of --init/--resume files you trust")
    g = p.add_argument_group("distributed (the original's flags; torchrun works too)")
    g.add_argument("--world-size", default=-1, type=int, help="number of nodes (processes without "
                   "--multiprocessing-distributed)")
    g.add_argument("--rank", default=-1, type=int, help="node rank (process rank without --multiprocessing-distributed)")
    g.add_argument("--dist-url", default="env://", help="url of the process group rendezvous")
    g.add_argument("--dist-backend", default="nccl", help="nccl (gloo is used when no GPU is visible)")
    g.add_argument("--gpu", default=None, type=int, help="GPU id for a one-process run")
    g.add_argument("--multiprocessing-distributed", action="store_true",
                   help="one process per GPU on this node (one CPU process when no GPU is visible)")
    return p


def config_from_args(args: argparse.Namespace, adversarial: bool) -> imp_config.IMPConfig:
    if not args.save_dir:
        raise UserError("--save_dir is required: the folder for checkpoints, tickets and logs")
    hardware.check_amp(args.amp)
    one_shot = args.omp_sparsity is not None or args.omp_level is not None
    if one_shot and (args.evaluate or args.resume):
        raise ConfigError("--omp-sparsity/--omp-level prune once without training: drop -e/--resume")
    if args.omp_level is not None and args.omp_level < 1:
        raise ConfigError(f"--omp-level must be >= 1, got {args.omp_level}")
    omp = 1 - (1 - args.rate) ** args.omp_level if args.omp_level is not None else args.omp_sparsity
    attack = None
    if adversarial:
        eps = attacks.eps_from_flag(args.train_eps, flag="--train_eps")
        if args.attack == "fgsm":
            attack = attacks.AttackConfig("fgsm", eps, None, 1, args.train_randinit)
        else:
            gamma = attacks.eps_from_flag(args.train_gamma, flag="--train_gamma")
            attack = attacks.AttackConfig("pgd", eps, gamma, args.train_step, args.train_randinit)
    return imp_config.IMPConfig(
        data=args.data, save_dir=args.save_dir, init=args.init, arch=args.arch, epochs=args.epochs,
        prune_epoch=args.prune_epoch, batch_size=args.batch_size, workers=args.workers, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, rate=args.rate, prune_method=args.prune_method,
        seed=args.seed, attack=attack, image_size=args.image_size, resize_size=args.resize_size,
        small_input=args.small_input, amp=args.amp, channels_last=args.channels_last, fused_sgd=args.fused_sgd,
        compile=args.compile, deterministic=args.deterministic, trust_pickle=args.trust_pickle,
        resume=args.resume or None, evaluate=args.evaluate, omp_sparsity=omp, omp_level=args.omp_level, show_progress=args.print_freq > 0)


def launch_from_args(args: argparse.Namespace) -> distributed.Launch:
    return distributed.Launch(gpu=args.gpu, dist_url=args.dist_url, dist_backend=args.dist_backend,
                              world_size=args.world_size, rank=args.rank,
                              multiprocessing_distributed=args.multiprocessing_distributed)


def _first_process(opts: distributed.Launch) -> bool:
    """Whether this process speaks for the run before ranks exist (torchrun's RANK, else the --rank flag)."""
    return distributed.first_process(opts)


def main(argv: list[str] | None, *, adversarial: bool) -> int:
    args = get_args_parser(adversarial).parse_args(argv)
    cfg = config_from_args(args, adversarial)
    opts = launch_from_args(args)
    if _first_process(opts):
        checkpoint.writable_dir(cfg.save_dir)
    if _first_process(opts) and not cfg.evaluate:
        checkpoint.remove_temp_files(cfg.save_dir)
        if args.restart:  # before config.json changes: a kill in between must not pair old files with it
            removed = imp_state.clear_outputs(cfg.save_dir)
            print(f"--restart: removed {len(removed)} files of the earlier run in {cfg.save_dir}", flush=True)
        checkpoint.check_config(cfg.save_dir, {**imp_config.config_dict(cfg), "launch": dataclasses.asdict(opts)},
                                restart=args.restart, volatile=imp_config.VOLATILE,
                                implied=imp_config.IMPLIED)
    layout = distributed.launch(imp_levels.worker, cfg, opts)
    if _first_process(opts):
        runlog.setup_log(cfg.save_dir, True).info(f"process layout: {layout}")
    return 0
