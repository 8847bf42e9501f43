"""The command line of main_train_downstream.py: the original's flags plus ours, converted once into a
`transfer.config.TransferConfig`, SAVE_DIR prepared, and the run launched in the process layout the flags ask for."""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict

from infra import checkpoint
from training import runner
from attacks import LOSSES, AttackConfig, eps_from_flag, parse_fraction
from infra.distributed import Launch
from infra.errors import ConfigError, OneLineParser
from transfer import config as transfer_config
from transfer import run as transfer_run
from transfer import state as transfer_state
from transfer.config import TransferConfig
from transfer.run import resolve_pipeline


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Downstream transfer of a ticket: standard or adversarial fine-tuning, then "
                                  "test SA/RA", add_help=True)
    g = p.add_argument_group("general (the original's flags)")
    g.add_argument("--data", default="../data", help="dataset root")
    g.add_argument("--dataset", default="cifar100", choices=transfer_config.DATASETS)
    g.add_argument("--data_number", type=float, default=1.0, help="fraction of the training split used, (0, 1]")
    g.add_argument("--arch", default="resnet50", help="model architecture")
    g.add_argument("--init", required=True, help="pre-trained weights; '' or none: random init (warned)")
    g.add_argument("--seed", type=int, default=1, help="seed of data order, augmentation and attack starts")
    g.add_argument("--save_dir", required=True, help="where the run's files go")
    g.add_argument("--resume", action="store_true",
                   help="require a checkpoint.pth.tar to continue (re-running resumes anyway)")
    g.add_argument("--save_all", action="store_true", help="also keep epoch<N>.pth.tar after every epoch")
    g = p.add_argument_group("training")
    g.add_argument("--mode", default="adv", choices=("std", "adv"), help="standard or adversarial fine-tuning")
    g.add_argument("--attack", default="pgd", choices=("pgd", "fgsm"),
                   help="adversarial training attack: PGD, or FGSM with random start (fast AT)")
    g.add_argument("--batch_size", type=int, default=128, help="global batch size")
    g.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--warmup", type=int, default=0, help="epochs of linear per-step lr warm-up")
    g.add_argument("--print_freq", type=int, default=50, help="0 silences the per-step progress lines")
    g.add_argument("--decreasing_lr", default="50,75", help="epochs where multistep multiplies the lr by 0.1")
    g.add_argument("--scheduler", default="multistep", choices=transfer_config.SCHEDULERS,
                   help="multistep (--decreasing_lr) or cosine annealing over --epochs")
    g.add_argument("--eval_from", type=int, default=0,
                   help="first (0-based) epoch with validation SA/RA (the original's CIFAR adv code: 45)")
    g = p.add_argument_group("attacks (eps and step sizes as fractions of the pixel range, as the original: "
                             "8/255 or 0.0314; values above 1 are refused)")
    g.add_argument("--train_eps", type=parse_fraction, default=8 / 255)
    g.add_argument("--train_step", type=int, default=None, help="default 10 (pgd) / 1 (fgsm)")
    g.add_argument("--train_gamma", type=parse_fraction, default=None, help="default 2/255 (pgd) / 1.25 * eps (fgsm)")
    g.add_argument("--test_eps", type=parse_fraction, default=8 / 255)
    g.add_argument("--test_step", type=int, default=20)
    g.add_argument("--test_gamma", type=parse_fraction, default=2 / 255)
    g.add_argument("--attack-loss", default="mean", choices=list(LOSSES),
                   help="both attacks' cross-entropy: mean over the batch (the original's) or sum "
                        "(advertorch's default; runs started before this flag used it)")
    g.add_argument("--autoattack", type=int, default=0, metavar="N",
                   help="also evaluate AutoAttack RA on the first N test images (0: off)")
    g.add_argument("--autoattack-version", default="standard", choices=transfer_config.AA_VERSIONS)
    g.add_argument("--autoattack-attacks", default="", help=f"with version custom: comma list of {transfer_config.AA_ATTACKS}")
    g = p.add_argument_group("ticket")
    g.add_argument("--tickets_file", default="", help="ticket or IMP checkpoint with masks; '' or none: dense")
    g = p.add_argument_group("data and model details")
    g.add_argument("--subset", default="first", choices=("first", "balanced"),
                   help="data_number keeps the first images (as the original) or a seeded class-balanced draw")
    g.add_argument("--download", action="store_true", help="download CIFAR/SVHN when missing")
    g.add_argument("--pipeline", default="auto", choices=transfer_config.PIPELINES,
                   help="where CIFAR/SVHN batches are augmented: device (uint8 images kept on the GPU, or CPU, and "
                        "cropped there), pil (DataLoader workers, torchvision's PIL transforms); auto: device for "
                        "cifar10/cifar100/svhn, pil for folder")
    g = p.add_argument_group("data, speed and safety")
    runner.add_speed_flags(g, channels_last=True)
    g.add_argument("--test-amp", action="store_true", help="final test SA/RA under --amp too (default: fp32)")
    runner.add_safety_flags(g, restart="start over in a SAVE_DIR holding another run")
    g = p.add_argument_group("distributed (ours: the original transfer is single-GPU; torchrun works too)")
    g.add_argument("--sync-bn", action="store_true",
                   help="with several GPUs, BatchNorm statistics over the global batch (SyncBatchNorm), so training "
                        "and the train-mode attack see all --batch_size images as on the original's one GPU; "
                        "without it each GPU normalises its own batch_size / GPUs images")
    runner.add_launch_flags(g)
    return p


def _optional_path(value: str) -> str | None:
    return None if value.strip() in ("", "none", "None") else value


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--decreasing_lr {text!r}: expected comma-separated epochs, e.g. 50,75") from None


def _train_attack(args) -> AttackConfig | None:
    if args.mode == "std":
        return None
    eps = eps_from_flag(args.train_eps, flag="--train_eps")
    alpha = None if args.train_gamma is None else eps_from_flag(args.train_gamma, flag="--train_gamma")
    if args.attack == "fgsm":
        if args.train_step not in (None, 1):
            raise ConfigError(f"--attack fgsm takes one step; drop --train_step {args.train_step}")
        return AttackConfig("fgsm", eps, alpha, 1)
    steps = 10 if args.train_step is None else args.train_step
    return AttackConfig("pgd", eps, 2 / 255 if alpha is None else alpha, steps)


def config_from_args(args) -> tuple[TransferConfig, Launch]:
    """The parsed flags, checked and converted once."""
    small = [f for f in ("epochs", "batch_size", "train_step", "test_step")
             if getattr(args, f) is not None and getattr(args, f) < 1]
    if small:
        raise ConfigError(f"--{small[0]} {getattr(args, small[0])} must be at least 1")
    negative = [f for f in ("warmup", "autoattack") if getattr(args, f) < 0]
    if negative:
        raise ConfigError(f"--{negative[0]} {getattr(args, negative[0])} must be at least 0")
    if args.eval_from < 0:
        raise ConfigError(f"--eval_from {args.eval_from} must be at least 0")
    if args.restart and args.resume:
        raise ConfigError("--restart starts over and --resume continues: pass one of them")
    attacks = tuple(a.strip() for a in args.autoattack_attacks.split(",") if a.strip())
    unknown = [a for a in attacks if a not in transfer_config.AA_ATTACKS]
    if unknown or bool(attacks) != (args.autoattack_version == "custom"):
        raise ConfigError(f"--autoattack-attacks {args.autoattack_attacks!r}: give a comma list of "
                          f"{', '.join(transfer_config.AA_ATTACKS)} together with --autoattack-version custom, and only then")
    test = AttackConfig("pgd", eps_from_flag(args.test_eps, flag="--test_eps"),
                        eps_from_flag(args.test_gamma, flag="--test_gamma"), args.test_step)
    cfg = TransferConfig(
        **runner.common_settings(args), dataset=args.dataset, data=args.data, data_number=args.data_number,
        subset=args.subset, download=args.download, arch=args.arch, init=_optional_path(args.init),
        ticket=_optional_path(args.tickets_file), mode=args.mode, train_attack=_train_attack(args),
        test_attack=test, attack_loss=args.attack_loss, sync_bn=args.sync_bn, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, epochs=args.epochs, warmup=args.warmup,
        milestones=_milestones(args.decreasing_lr), scheduler=args.scheduler, eval_from=args.eval_from,
        autoattack=args.autoattack, autoattack_version=args.autoattack_version, autoattack_attacks=attacks,
        save_all=args.save_all, require_checkpoint=args.resume, pipeline=args.pipeline, test_amp=args.test_amp,
        show_progress=args.print_freq > 0)
    resolve_pipeline(cfg)  # --pipeline device with folder data stops here, before SAVE_DIR is touched
    return cfg, runner.launch_from_args(args)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg, opts = config_from_args(args)
    if runner.first_process(opts):
        runner.claim_save_dir(cfg.save_dir)
        started = any(os.path.exists(os.path.join(cfg.save_dir, n)) for n in (checkpoint.CHECKPOINT, checkpoint.RESULTS))
        runner.prepare_save_dir(cfg.save_dir, {**asdict(cfg), **asdict(opts), "print_freq": args.print_freq},
                                restart=args.restart, clear=transfer_state.clear_run, started=started,
                                volatile=transfer_config.VOLATILE, implied=transfer_config.IMPLIED)
    runner.start(transfer_run.run, cfg, opts)
    return 0
