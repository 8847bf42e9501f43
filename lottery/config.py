"""The IMP run's settings: the frozen `IMPConfig` the CLI builds once, its plain-dict form, and which
config.json keys may change between runs of one experiment."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from attacks import LOSSES, AttackConfig
from infra.errors import ConfigError

PRUNE_METHODS = ("magnitude", "random")
# config.json keys that may change between runs of one experiment, beside runner.VOLATILE: the process layout,
# what the command does this time, and --epochs (a larger value continues a finished run with more levels)
VOLATILE = ("epochs", "resume", "evaluate", "launch")
# settings added after the first release beside runner.IMPLIED's, with the behaviour of runs started before them:
# ticket finding always seeded its epochs as runner.epoch_seed does
IMPLIED = {"epoch_seeds": "independent"}


@dataclass(frozen=True)
class IMPConfig:
    data: str                            # ImageNet layout: data/train/<class>/*, data/val/<class>/*
    save_dir: str
    init: str | None = None              # pre-trained weights; None: the arch's seeded random init
    arch: str = "resnet50"
    epochs: int = 570                    # in all: levels * prune_epoch
    prune_epoch: int = 30                # epochs per level
    batch_size: int = 2048               # global, over all processes
    workers: int = 4                     # loader processes per rank
    lr: float = 0.0005                   # constant, as the original
    momentum: float = 0.9
    weight_decay: float = 1e-4
    rate: float = 0.2                    # fraction of the surviving conv weights pruned per level
    prune_method: str = "magnitude"      # "random": the paper's random-pruning baseline
    seed: int = 1
    attack: AttackConfig | None = None   # None: standard IMP (clean training)
    attack_loss: str = "mean"            # the attack's loss (attacks.LOSSES): the original's mean cross-entropy
    image_size: int = 224
    resize_size: int = 256
    small_input: bool = False
    amp: str | None = None               # "bf16" | "fp16", CUDA only
    channels_last: bool | None = None    # None: on CUDA only
    fused_sgd: bool = True               # torch's fused SGD kernel (last-bit differences from the loop)
    compile: bool = False                # nn.Module.compile() in place (parameter names kept)
    deterministic: bool = False
    tf32: bool = True                    # cuDNN TF32 in fp32 convolutions (the default; PyTorch 1.5 had none)
    trust_pickle: bool = False
    resume: str | None = None            # a checkpoint to continue from (ours or the original's)
    evaluate: bool = False               # evaluate the loaded model, write evaluate.json, stop
    omp_sparsity: float | None = None    # one-shot pruning of the init to this sparsity, no training
    omp_level: int | None = None         # the level number the one-shot ticket is filed under
    show_progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.prune_epoch >= 1, f"--prune_epoch must be >= 1, got {self.prune_epoch}"),
            (self.epochs >= self.prune_epoch and self.epochs % self.prune_epoch == 0,
             f"--epochs {self.epochs} must be a positive multiple of --prune_epoch {self.prune_epoch} "
             "(every level trains --prune_epoch epochs)"),
            (0 < self.rate < 1, f"--rate must be a fraction in (0, 1), got {self.rate}"),
            (self.prune_method in PRUNE_METHODS, f"--prune-method must be one of {', '.join(PRUNE_METHODS)}"),
            (self.batch_size >= 1 and self.workers >= 0, "-b must be >= 1 and -j >= 0"),
            (self.lr >= 0 and self.weight_decay >= 0 and self.momentum >= 0, "--lr, --wd and --momentum must be >= 0"),
            (self.image_size >= 1 and self.resize_size >= 1, "--image-size and --resize-size must be >= 1"),
            (self.amp in (None, "bf16", "fp16"), f"--amp must be bf16 or fp16, got {self.amp!r}"),
            (self.attack_loss in LOSSES,
             f"--attack-loss must be one of {', '.join(LOSSES)}, got {self.attack_loss!r}"),
            (self.omp_sparsity is None or 0 < self.omp_sparsity < 1,
             f"--omp-sparsity must be a fraction in (0, 1), got {self.omp_sparsity}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def levels(self) -> int:
        return self.epochs // self.prune_epoch

    @property
    def source(self) -> str:
        """How the tickets are made (the ticket meta's `source`, which report.py groups by)."""
        name = "omp" if self.omp_sparsity is not None else "aimp" if self.attack is not None else "imp"
        return name if self.prune_method == "magnitude" else f"{name}-random"


def implied(cfg: IMPConfig) -> dict:
    """IMPLIED for this run: A-IMP runs started before `attack_loss` was recorded attacked with the summed loss
    (they continue with --attack-loss sum); standard IMP never attacks, so its older runs continue as they are."""
    return {**IMPLIED, "attack_loss": "sum" if cfg.attack is not None else cfg.attack_loss}


def config_dict(cfg: IMPConfig) -> dict:
    """Plain values only (json- and weights_only-safe), for config.json, checkpoints and tickets."""
    return dataclasses.asdict(cfg)
