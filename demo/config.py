"""The demo's settings: the quick, default and study sizes (images, levels, epochs, seeds, margin) and the ticket
families each finds. demo/run.py runs whichever it is given; nothing else differs between them."""
from __future__ import annotations

from dataclasses import dataclass

COMMON = ["--small-input", "--image-size", "32", "--resize-size", "32", "--deterministic"]
STUDY_TEST_PER_CLASS = 250   # 1000 test images: one image is 0.1 accuracy points
STUDY_MARGIN = 3.0           # accuracy points, fixed before any study result was seen (see README, the demo)
STUDY_SEEDS = 5              # IMP seeds, each transferred with its own transfer seed; dense and OMP: 5 transfer seeds


@dataclass(frozen=True)
class DemoConfig:
    out: str
    seed: int = 0
    quick: bool = False
    study: bool = False  # replicated: 5 IMP seeds, each paired with a transfer seed; 1000 test images; margin 3

    def __post_init__(self):
        if self.quick and self.study:
            raise SystemExit("demo: --quick and --study are two different sizes; pass one")

    @property
    def scale(self) -> float:
        """Of the train and validation image counts (demo/data.py)."""
        return 0.1 if self.quick else 1.0

    @property
    def test_per_class(self) -> int:
        return STUDY_TEST_PER_CLASS if self.study else max(4, int(30 * self.scale))

    @property
    def levels(self) -> int:
        """IMP's trained levels; each family's tickets go one level further (the study: one round, to 75%)."""
        return 2 if self.quick else 1 if self.study else 3

    @property
    def epochs_per_level(self) -> int:
        return 2 if self.quick else 3

    @property
    def kinds(self) -> tuple[str, ...]:
        # (pre-training kind): robust pre-training -> A-IMP tickets; standard -> IMP tickets
        return ("robust",) if self.quick else ("robust", "standard")

    @property
    def imp_seeds(self) -> tuple[int, ...]:
        """One IMP seed finds each family's tickets; the study finds them five times (the campaign's `seeds`),
        and transfers IMP seed k's tickets with transfer seed k (`paired`): each is compared with the dense run of
        its own seed, which saw the same data order, augmentation and new head."""
        return tuple(self.seed + k for k in range(1, STUDY_SEEDS + 1)) if self.study else (self.seed + 1,)

    @property
    def transfer_seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + k for k in range(1, STUDY_SEEDS + 1)) if self.study else (self.seed + 1,)

    @property
    def margin(self) -> float | None:
        """The report's --margin (None: its default, 1 point)."""
        return STUDY_MARGIN if self.study else None

    @property
    def checkpoint(self) -> str:
        """The report's --checkpoint. The study reads the weights after the last epoch: its 80 validation images
        tie at 100% SA from early epochs, so the best-SA epoch, and RA with it, moves from seed to seed (the
        paper's best-SA reading is printed beside it)."""
        return "last" if self.study else "sa"


def transfer_overrides(cfg: DemoConfig) -> tuple[list[str], list[str], list[str]]:
    """The small-scale flags of every transfer run, then of std and of adv runs (after the drivers' defaults)."""
    epochs = 2 if cfg.quick else 6
    milestones = ",".join(str(m) for m in sorted({epochs // 2, 3 * epochs // 4}))
    test_steps = 2 if cfg.quick else 10  # PGD steps of every validation and test RA: most of a quick run's time
    common = ["--arch", "resnet_tiny", *COMMON, "--epochs", str(epochs), "--decreasing_lr", milestones,
              "--test_step", str(test_steps), "--no-progress", "-j", "0"]
    std = ["--lr", "0.01", "--batch_size", "32"]
    adv = ["--lr", "0.02", "--batch_size", "32", "--eval_from", "0", "--train_step", "3", "--train_gamma", "4/255"]
    return common, std, adv


@dataclass(frozen=True)
class Family:
    """One way of finding tickets from one pre-trained model: its folder under tickets/, the IMP script's extra
    flags, and the levels whose tickets are transferred (a family's level 1 is the plain one's: pruned from the
    init before any training, so it is not transferred twice)."""
    kind: str       # the pre-training kind it starts from
    name: str       # the ticket family (its tickets' `family`, and the campaign's ticket folder name)
    folder: str
    flags: tuple[str, ...]
    levels: tuple[int, ...]
    title: str


def families(cfg: DemoConfig) -> list[Family]:
    """A-IMP, early-bird A-IMP and one-shot (OMP) from the robust model; IMP from the standard one. The study:
    A-IMP and IMP, and OMP of each model (the overlap's floor), at 75% (a transfer run tests three checkpoints
    on 1000 images: each more sparsity adds 20 transfer runs per pre-trained model, 30 with OMP)."""
    every = tuple(range(1, cfg.levels + 2))
    deepest = (cfg.levels + 1,)
    if cfg.study:
        return [Family("robust", "aimp", "robust", (), deepest, "A-IMP"),
                Family("robust", "omp", "robust-omp", (), deepest, "one-shot magnitude pruning of the robust model"),
                Family("standard", "imp", "standard", (), deepest, "IMP"),
                Family("standard", "omp", "standard-omp", (), deepest,
                       "one-shot magnitude pruning of the standard model")]
    later = deepest if cfg.quick else every[1:]
    out = [Family("robust", "aimp", "robust", (), every, "A-IMP"),
           Family("robust", "aimp-eb", "robust-eb", ("--early-bird", "0.01", "--early-bird-window", "2"), later,
                  "early-bird A-IMP (a level stops once less than 1% of what it prunes changes between epochs)"),
           Family("robust", "omp", "robust-omp", (), deepest,
                  "one-shot magnitude pruning of the robust model (OMP), no training")]
    out += [Family("standard", "imp", "standard", (), every, "IMP")] if "standard" in cfg.kinds else []
    return out
