"""The transfer run's settings: the frozen `TransferConfig`, each field declared with its flag
(main_train_downstream.py's parser is generated from it), checked on construction, and the choices it allows."""
from __future__ import annotations

from dataclasses import dataclass

import models
from dataset import SUBSETS
from datafiles import facts
from attacks import LOSSES, AttackConfig, AttackFlags
from infra.errors import ConfigError
from infra.flags import Flag, built, flag
from training.runner import GENERAL, SPEED, RunSettings, optional_path

DATASETS = facts.DOWNSTREAM  # the table's transfer targets (imagenet is IMP's), read at each use
SCHEDULERS = ("multistep", "cosine")
PIPELINES = ("auto", "device", "pil")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
TRAINING, TICKET, DETAILS = "training", "ticket", "data and model details"
ATTACKS = "attacks (eps and step sizes as fractions of the pixel range, as the original: 8/255 or 0.0314)"
TRAIN_ATTACK = AttackFlags("train", steps=10, gamma=2 / 255, kinds=True)   # the original's PGD-10 training
TEST_ATTACK = AttackFlags("test", steps=20, gamma=2 / 255)                  # and PGD-20 test


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--decreasing_lr {text!r}: expected comma-separated epochs, e.g. 50,75") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


@dataclass(frozen=True)
class TransferConfig(RunSettings):
    dataset: str = flag("--dataset", "cifar100", "", group=GENERAL, choices=DATASETS)
    data: str = flag("--data", "../data", "dataset root", group=GENERAL, result=False)
    data_number: float = flag("--data_number", 1.0, "fraction of the training split used, (0, 1]", group=GENERAL,
                              type=float)
    arch: str = flag("-a --arch", "resnet50", "model architecture", group=GENERAL, choices=list(models.ARCHS))
    init: str | None = flag("--init", None, "pre-trained weights; '' or none: random init (warned)", group=GENERAL,
                            type=optional_path, required=True)
    save_all: bool = flag("--save_all", False, "also keep epoch<N>.pth.tar after every epoch", group=GENERAL,
                          result=False)
    require_checkpoint: bool = flag("--require-checkpoint", False, "fail unless SAVE_DIR holds a checkpoint.pth.tar "
                                    "to continue (re-running resumes anyway)", group=GENERAL, result=False,
                                    also=[Flag(("--resume",), "the original's spelling of --require-checkpoint "
                                               "(IMP's --resume takes a checkpoint file)", action="store_true")])
    mode: str = flag("--mode", "adv", "standard or adversarial fine-tuning", group=TRAINING, choices=("std", "adv"))
    batch_size: int = flag("-b --batch-size --batch_size", 128, "global batch size", group=TRAINING, type=int)
    lr: float = flag("--lr --learning-rate", 0.1, "initial learning rate", group=TRAINING, type=float)
    momentum: float = flag("--momentum", 0.9, "", group=TRAINING, type=float)
    weight_decay: float = flag("--wd --weight-decay --weight_decay", 5e-4, "", group=TRAINING, type=float)
    epochs: int = flag("--epochs", 100, "", group=TRAINING, type=int)
    warmup: int = flag("--warmup", 0, "epochs of linear per-step lr warm-up", group=TRAINING, type=int)
    milestones: tuple[int, ...] = flag("--decreasing_lr", (50, 75), "epochs where multistep multiplies the lr by "
                                       "0.1", group=TRAINING, type=_milestones, show="50,75")
    scheduler: str = flag("--scheduler", "multistep", "multistep (--decreasing_lr) or cosine annealing over "
                          "--epochs", group=TRAINING, choices=SCHEDULERS)
    eval_from: int = flag("--eval_from", 0, "first (0-based) epoch with validation SA/RA (the original's CIFAR adv "
                          "code: 45)", group=TRAINING, type=int)
    train_attack: AttackConfig | None = built(TRAIN_ATTACK.flags(), TRAIN_ATTACK.build, TRAIN_ATTACK.default(),
                                              group=ATTACKS)  # None with --mode std
    test_attack: AttackConfig = built(TEST_ATTACK.flags(), TEST_ATTACK.build, TEST_ATTACK.default(), group=ATTACKS)
    attack_loss: str = flag("--attack-loss", "mean", "both attacks' cross-entropy: mean over the batch (the "
                            "original's) or sum (advertorch's default)", group=ATTACKS, choices=list(LOSSES))
    autoattack: int = flag("--autoattack", 0, "also evaluate AutoAttack RA on the first N test images (0: off)",
                           group=ATTACKS, type=int, metavar="N", result=False)
    autoattack_version: str = flag("--autoattack-version", "standard", "", group=ATTACKS, choices=AA_VERSIONS,
                                   result=False)
    autoattack_attacks: tuple[str, ...] = flag("--autoattack-attacks", (), "with version custom: a comma list of "
                                               f"{', '.join(AA_ATTACKS)}", group=ATTACKS, type=_names,
                                               result=False)
    ticket: str | None = flag("--tickets_file", None, "ticket or IMP checkpoint with masks; '' or none: dense",
                              group=TICKET, type=optional_path, metavar="FILE")
    any_ticket_init: bool = flag("--any-ticket-init", False, "apply a ticket found in other init weights than --init "
                                 "(refused by default: a ticket is a mask for the weights it was found in)",
                                 group=TICKET, result=False)
    subset: str = flag("--subset", "first", "data_number keeps the first images (as the original) or a seeded "
                       "class-balanced draw", group=DETAILS, choices=SUBSETS)
    download: bool = flag("--download", False, "download CIFAR/SVHN when missing", group=DETAILS, result=False)
    pipeline: str = flag("--pipeline", "auto", "where CIFAR/SVHN batches are augmented: device (uint8 images kept on "
                         "the GPU, or CPU, and cropped there), pil (DataLoader workers, torchvision's PIL "
                         "transforms); auto: device for cifar10/cifar100/svhn, pil for folder", group=DETAILS,
                         choices=PIPELINES)
    channels_last: bool = flag("--channels-last", True, "channels_last memory format", group=SPEED)
    test_amp: bool = flag("--test-amp", False, "final test SA/RA under --amp too (default: fp32)", group=SPEED,
                          result=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode == "std":
            object.__setattr__(self, "train_attack", None)  # standard fine-tuning trains on clean images
        at_least = [("--epochs", self.epochs, 1), ("-b/--batch_size", self.batch_size, 1),
                    ("--warmup", self.warmup, 0), ("--eval_from", self.eval_from, 0),
                    ("--autoattack", self.autoattack, 0)]
        for name, value, low in at_least:
            if value < low:
                raise ConfigError(f"{name} {value} must be at least {low}")
        if min(self.lr, self.weight_decay, self.momentum) < 0:
            raise ConfigError("--lr, --wd and --momentum must be >= 0")  # IMP's words for the same mistake
        if self.restart and self.require_checkpoint:
            raise ConfigError("--restart starts over and --require-checkpoint continues: pass one of them")
        unknown = [a for a in self.autoattack_attacks if a not in AA_ATTACKS]
        if unknown or bool(self.autoattack_attacks) != (self.autoattack_version == "custom"):
            raise ConfigError(f"--autoattack-attacks {','.join(self.autoattack_attacks)!r}: give a comma list of "
                              f"{', '.join(AA_ATTACKS)} together with --autoattack-version custom, and only then")
