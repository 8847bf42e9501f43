"""The transfer run's settings: the frozen `TransferConfig` the CLI builds once, the choices it allows, and which
config.json keys may change between runs of one experiment."""
from __future__ import annotations

from dataclasses import dataclass, field

from attacks import AttackConfig

DATASETS = ("cifar10", "cifar100", "svhn", "folder", "cifar10_2", "visda")  # the last two: original variants
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
    attack_loss: str = "mean"            # both attacks' loss (attacks.LOSSES): the original's mean cross-entropy
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
    tf32: bool = True                    # cuDNN TF32 in fp32 convolutions (the default; PyTorch 1.5 had none)
    sync_bn: bool = False                # SyncBatchNorm over the ranks (multi-GPU; the original is single-GPU)
    amp: str | None = None
    test_amp: bool = False               # final test under --amp too (default: fp32, whatever the training's amp)
    channels_last: bool = True
    pipeline: str = "auto"               # where batches are augmented: auto, device or pil (resolve_pipeline)
    fused_sgd: bool = True               # one fused SGD kernel (the same update up to the last bit: FMA)
    compile: bool = False                # nn.Module.compile() in place (parameter names kept)
    show_progress: bool = True


AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# config.json keys that may change between runs of one experiment, beside runner.VOLATILE: how it reports, what
# is tested extra, the process layout (recorded flat); pipeline and fused_sgd are not among them: they change
# the numbers (other random crops, last-bit updates)
VOLATILE = ("download", "print_freq", "save_all", "require_checkpoint", "autoattack", "autoattack_version",
            "autoattack_attacks", "test_amp", "gpu", "dist_url", "dist_backend", "world_size", "rank",
            "multiprocessing_distributed")
# settings added after the first release beside runner.IMPLIED's, with the behaviour of runs started before them:
# such a run continues with `--pipeline pil --no-fused-sgd --attack-loss sum` (no SyncBatchNorm), except that
# transfer runs started before 2026-11-29 seeded each epoch's global RNG with the seed of the loader's order
# generator (`loader`), which no flag selects
IMPLIED = {"pipeline": "pil", "attack_loss": "sum", "sync_bn": False, "epoch_seeds": "loader"}
