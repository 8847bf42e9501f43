"""The IMP run's settings: the frozen `IMPConfig`, each field declared with its flag (main_imp_*.py's parser is
generated from it), checked on construction, and its plain-dict form."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import dataset
import models
from attacks import LOSSES, AttackConfig, AttackFlags
from infra.errors import ConfigError
from infra.flags import REQUIRED, Flag, built, flag
from lottery import criteria
from training.runner import GENERAL, SPEED, RunSettings, optional_path

PRUNE_METHODS = criteria.CRITERIA.keys()  # the registered pruning criteria (lottery/criteria.py), a live view
TRAINING, PRUNING, ATTACK = "training", "pruning", "attack (A-IMP; eps and step sizes as fractions of the pixel range)"
TRAIN_ATTACK = AttackFlags("train", steps=3, gamma=16 / 765, kinds=True, randinit=True)  # the original A-IMP's
ATTACK_FIELDS = ("attack", "attack_loss", "robust_val", "robust_val_images")  # main_imp_std.py: no attack flags


@dataclass(frozen=True)
class IMPConfig(RunSettings):
    data: str = flag("data", REQUIRED, "dataset folder: DIR/train/<class>/*, DIR/val/<class>/*", group=GENERAL,
                     metavar="DIR", result=False, also=[Flag(("--data",), "the same, as transfer spells it",
                                                             metavar="DIR")])
    init: str | None = flag("--init", None, "pre-trained weights (loaded strictly)", group=GENERAL, metavar="PATH")
    data_number: float = flag("--data_number", 1.0, "data diet: find tickets on this fraction of the training images "
                              "(0, 1], a seeded class-balanced draw unless --subset first; its indices go to "
                              "SAVE_DIR/train_indices.json", group=GENERAL, type=float, metavar="F")
    subset: str = flag("--subset", "balanced", "how --data_number draws: balanced (seeded, every class alike) or the "
                       "first images of the split (ImageFolder orders them by class)", group=GENERAL,
                       choices=dataset.SUBSETS)
    arch: str = flag("-a --arch", "resnet50", "model architecture", group=GENERAL, choices=list(models.ARCHS))
    epochs: int = flag("--epochs", 570, "epochs in all (levels * --prune_epoch); a larger value continues a "
                       "finished run with more levels", group=TRAINING, type=int, result=False)
    prune_epoch: int = flag("--prune_epoch", 30, "epochs per level", group=TRAINING, type=int)
    batch_size: int = flag("-b --batch-size --batch_size", 2048, "global batch, split over all processes (the "
                           "original split it over one node's GPUs, so its global batch was b x nodes: on N nodes "
                           "pass N x its -b)", group=TRAINING, type=int)
    lr: float = flag("--lr --learning-rate", 0.0005, "SGD lr (constant, as the original)", group=TRAINING, type=float)
    momentum: float = flag("--momentum", 0.9, "SGD momentum", group=TRAINING, type=float)
    weight_decay: float = flag("--wd --weight-decay --weight_decay", 1e-4, "weight decay", group=TRAINING, type=float)
    rate: float = flag("--rate", 0.2, "fraction of the surviving conv weights pruned per level", group=PRUNING,
                       type=float)
    prune_method: str = flag("--prune-method", "magnitude", criteria.help_text, group=PRUNING, choices=PRUNE_METHODS)
    attack: AttackConfig | None = built(TRAIN_ATTACK.flags(), TRAIN_ATTACK.build, None, group=ATTACK)
    attack_loss: str = flag("--attack-loss", "mean", "the attack's cross-entropy: mean over the batch (the "
                            "original's) or sum (advertorch's default)", group=ATTACK, choices=list(LOSSES))
    robust_val: int | None = flag("--robust-val", None, "robust validation: every epoch, PGD-K accuracy (--train_eps, "
                                  "step 2.5 eps / K, random start) and clean accuracy on a fixed slice of DIR/val, "
                                  "in the metrics rows (val_ra, val_slice_sa) and each <k>-sparsity.json, with a "
                                  "warning when it collapses (FGSM-RS's catastrophic overfitting); the tickets do not "
                                  "change", group=ATTACK, type=int, metavar="K", result=False)
    robust_val_images: int = flag("--robust-val-images", 1000, "images in --robust-val's slice, evenly spaced over "
                                  "DIR/val (every class in it)", group=ATTACK, type=int, metavar="N", result=False)
    channels_last: bool | None = flag("--channels-last", None, "channels_last memory format (default: on with a "
                                      "GPU)", group=SPEED)
    resume: str | None = flag("--resume", None, "continue from this checkpoint (ours or the original's "
                              "<level>-checkpoint.pth.tar); without it, re-running the same command resumes from "
                              "SAVE_DIR", group=GENERAL, metavar="PATH", type=optional_path, result=False)
    evaluate: bool = flag("-e --evaluate", False, "evaluate the unpruned init (or --resume's checkpoint, mask "
                          "included) on DIR/val, write SAVE_DIR/evaluate.json and stop; the original evaluated the "
                          "init after level 1's prune", group=GENERAL, result=False)
    omp_sparsity: float | None = flag("--omp-sparsity", None, "one-shot (OMP): prune the init straight to sparsity "
                                      "S, write 1-ticket.pth.tar, no training", group=PRUNING, type=float,
                                      metavar="S")
    omp_level: int | None = flag("--omp-level", None, "one-shot (OMP) to the sparsity of level K, 1-(1-rate)^K, "
                                 "written as K-ticket.pth.tar", group=PRUNING, type=int, metavar="K")
    family: str | None = flag("--family", None, "the ticket family's name, in each ticket's metadata (`family`) and "
                              "the report (default: derived from the recipe: imp, aimp, aimp-fgsm, omp, with -eb, "
                              "-diet<F>, and the --prune-method's suffix, e.g. -random)", group=PRUNING,
                              metavar="NAME")
    early_bird: float | None = flag("--early-bird", None, "early-bird levels: stop a level's training once the masks "
                                    "it would prune to in the last --early-bird-window epochs are all within "
                                    "distance D of the newest. The distance (each metrics row's mask_distance) is "
                                    "the Hamming distance over the level's surviving weights divided by its "
                                    "maximum, 2 min(k, n - k) for k of n pruned: 1 at most whatever --rate; at "
                                    "--rate <= 0.5, the fraction of the weights a level prunes that two masks "
                                    "choose differently (e.g. 0.05; docs/EARLY_BIRD.md)", group=PRUNING,
                                    type=float, metavar="D")
    early_bird_window: int = flag("--early-bird-window", 3, "epochs of masks compared by --early-bird (>= 2)",
                                  group=PRUNING, type=int, metavar="W")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.omp_level is not None and self.omp_level >= 1 and self.omp_sparsity is None:
            object.__setattr__(self, "omp_sparsity", 1 - (1 - self.rate) ** self.omp_level)  # K's sparsity
        checks = [
            (self.prune_epoch >= 1, f"--prune_epoch must be >= 1, got {self.prune_epoch}"),
            (self.epochs >= self.prune_epoch and self.epochs % self.prune_epoch == 0,
             f"--epochs {self.epochs} must be a positive multiple of --prune_epoch {self.prune_epoch} "
             "(every level trains --prune_epoch epochs)"),
            (0 < self.rate < 1, f"--rate must be a fraction in (0, 1), got {self.rate}"),
            (self.prune_method in PRUNE_METHODS, f"--prune-method must be one of {', '.join(PRUNE_METHODS)}"),
            (self.batch_size >= 1, f"-b/--batch_size {self.batch_size} must be at least 1"),
            (self.lr >= 0 and self.weight_decay >= 0 and self.momentum >= 0, "--lr, --wd and --momentum must be >= 0"),
            (self.attack_loss in LOSSES,
             f"--attack-loss must be one of {', '.join(LOSSES)}, got {self.attack_loss!r}"),
            (self.omp_level is None or self.omp_level >= 1, f"--omp-level must be >= 1, got {self.omp_level}"),
            (self.omp_level is None or self.omp_sparsity == 1 - (1 - self.rate) ** self.omp_level,
             "--omp-sparsity and --omp-level both give the one-shot sparsity: pass one of them"),
            (self.omp_sparsity is None or 0 < self.omp_sparsity < 1,
             f"--omp-sparsity must be a fraction in (0, 1), got {self.omp_sparsity}"),
            (self.omp_sparsity is None or not (self.evaluate or self.resume),
             "--omp-sparsity/--omp-level prune once without training: drop -e/--resume"),
            (0 < self.data_number <= 1, f"--data_number must be a fraction in (0, 1], got {self.data_number}"),
            (self.family is None or (self.family.strip() == self.family and self.family
                                     and self.family not in ("dense", "ticket")),
             f"--family {self.family!r}: a name without surrounding spaces, not dense or ticket"),
            (self.early_bird is None or 0 < self.early_bird < 1,
             f"--early-bird must be a distance in (0, 1), e.g. 0.05, got {self.early_bird}"),
            (self.early_bird_window >= 2, f"--early-bird-window must be at least 2, got {self.early_bird_window}"),
            (self.robust_val is None or self.robust_val >= 1,
             f"--robust-val must be at least 1, got {self.robust_val}"),
            (self.robust_val is None or self.attack is not None,
             "--robust-val attacks at A-IMP's --train_eps: use main_imp_adv.py (imp_adv.sh)"),
            (self.robust_val_images >= 1, f"--robust-val-images must be at least 1, got {self.robust_val_images}"),
            (self.early_bird is None or self.omp_sparsity is None,
             "--early-bird watches the masks of trained levels: drop it with --omp-sparsity/--omp-level"),
            (self.early_bird is None or self.prune_method not in PRUNE_METHODS
             or criteria.CRITERIA[self.prune_method].early_bird,
             f"--early-bird watches the masks of trained levels, which --prune-method {self.prune_method} does not "
             f"follow: drop it, or prune with one that does ({', '.join(criteria.watched())})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def levels(self) -> int:
        return self.epochs // self.prune_epoch

    @property
    def ticket_family(self) -> str:
        """How the tickets are made, the ticket family (the ticket meta's `family`, which report.py groups by):
        --family, else imp, aimp (aimp-fgsm with FGSM-RS), omp; -eb for early-bird levels, -diet<F> on a fraction
        F of the data, then the pruning criterion's suffix (none for magnitude, -random for random)."""
        return family_of(config_dict(self))


def family_of(config: dict) -> str:
    """The ticket family a run's settings make, from their plain form (`config_dict`, or the `config` an IMP
    checkpoint holds)."""
    if config.get("family") is not None:
        return config["family"]
    attack = config.get("attack")
    name = "omp" if config.get("omp_sparsity") is not None else "aimp" if attack is not None else "imp"
    name += "-fgsm" if name == "aimp" and attack.get("kind") == "fgsm" else ""
    name += "-eb" if config.get("early_bird") is not None else ""
    name += f"-diet{config['data_number']:g}" if config.get("data_number", 1.0) < 1 else ""
    return name + criteria.family_suffix(config.get("prune_method", "magnitude"))


def config_dict(cfg: IMPConfig) -> dict:
    """Plain values only (json- and weights_only-safe), for config.json, checkpoints and tickets."""
    return dataclasses.asdict(cfg)
