"""The command line of main_imp_adv.py / main_imp_std.py: the original's flags plus ours, converted once into
an `imp_config.IMPConfig`, config.json checked, and the run launched in the process layout the flags ask for."""
from __future__ import annotations

import argparse
import dataclasses

import attacks
import models
from infra import runlog
from training import runner
from infra.errors import ConfigError, OneLineParser, UserError
from lottery import config as imp_config
from lottery import levels as imp_levels
from lottery import state as imp_state


def get_args_parser(adversarial: bool) -> argparse.ArgumentParser:
    what = "A-IMP (adversarial training)" if adversarial else "IMP (standard training)"
    p = OneLineParser(
        description=f"{what} on an ImageNet-layout folder: level 1 prunes the pre-trained conv weights by "
                    "magnitude; each level trains --prune_epoch epochs, prunes --rate of the survivors, rewinds "
                    "them to the pre-trained weights. Defaults are the paper's. Re-run the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", metavar="DIR", help="dataset folder: DIR/train/<class>/*, DIR/val/<class>/*")
    p.add_argument("-a", "--arch", default="resnet50", choices=list(models.ARCHS), help="model architecture")
    p.add_argument("--epochs", default=570, type=int, help="epochs in all (levels * --prune_epoch)")
    p.add_argument("-b", "--batch-size", default=2048, type=int,
                   help="global batch, split over all processes (the original split it over one node's GPUs, so "
                        "its global batch was b x nodes: on N nodes pass N x its -b)")
    p.add_argument("--lr", "--learning-rate", default=0.0005, type=float, dest="lr", help="SGD lr (constant)")
    p.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay")
    p.add_argument("-p", "--print-freq", default=10, type=int,
                   help="0 hides the in-epoch progress lines (shown about every 10%% of an epoch otherwise)")
    p.add_argument("--resume", default="", metavar="PATH",
                   help="continue from this checkpoint (ours or the original's <level>-checkpoint.pth.tar); "
                        "without it, re-running the same command resumes from SAVE_DIR")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="evaluate the unpruned init (or --resume's checkpoint, mask included) on DIR/val, write "
                        "SAVE_DIR/evaluate.json and stop; the original evaluated the init after level 1's prune")
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
        p.add_argument("--attack-loss", default="mean", choices=list(attacks.LOSSES),
                       help="the attack's cross-entropy: mean over the batch (the original's) or sum "
                            "(advertorch's default; A-IMP runs started before this flag used it)")
    g = p.add_argument_group("pruning")
    g.add_argument("--prune-method", default="magnitude", choices=list(imp_config.PRUNE_METHODS),
                   help="global magnitude pruning, or random pruning (the paper's baseline)")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--omp-sparsity", type=float, default=None, metavar="S",
                     help="one-shot (OMP): prune the init straight to sparsity S, write 1-ticket.pth.tar, no training")
    one.add_argument("--omp-level", type=int, default=None, metavar="K",
                     help="one-shot (OMP) to the sparsity of level K, 1-(1-rate)^K, written as K-ticket.pth.tar")
    g = p.add_argument_group("data, speed and safety")
    runner.add_speed_flags(g, channels_last=None)
    runner.add_safety_flags(g, restart="delete this run's level files and metrics in SAVE_DIR and start over")
    runner.add_launch_flags(p.add_argument_group("distributed (the original's flags; torchrun works too)"))
    return p


def config_from_args(args: argparse.Namespace, adversarial: bool) -> imp_config.IMPConfig:
    if not args.save_dir:
        raise UserError("--save_dir is required: the folder for checkpoints, tickets and logs")
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
        **runner.common_settings(args), data=args.data, init=args.init, arch=args.arch, epochs=args.epochs,
        prune_epoch=args.prune_epoch, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, rate=args.rate, prune_method=args.prune_method, attack=attack,
        attack_loss=args.attack_loss if adversarial else "mean",
        resume=args.resume or None, evaluate=args.evaluate, omp_sparsity=omp, omp_level=args.omp_level,
        show_progress=args.print_freq > 0)


def main(argv: list[str] | None, *, adversarial: bool) -> int:
    args = get_args_parser(adversarial).parse_args(argv)
    cfg = config_from_args(args, adversarial)
    opts = runner.launch_from_args(args)
    first = runner.first_process(opts)
    if first:
        runner.claim_save_dir(cfg.save_dir)
    if first and not cfg.evaluate:
        runner.prepare_save_dir(cfg.save_dir, {**imp_config.config_dict(cfg), "launch": dataclasses.asdict(opts)},
                                restart=args.restart, clear=imp_state.clear_outputs, started=True,
                                volatile=imp_config.VOLATILE, implied=imp_config.implied(cfg))
    layout = runner.start(imp_levels.worker, cfg, opts)
    if first:
        runlog.setup_log(cfg.save_dir, True).info(f"process layout: {layout}")
    return 0
