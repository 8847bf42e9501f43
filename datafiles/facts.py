"""Every dataset's facts in one table that reads without torch (the campaign reads it): classes, split sizes,
normalisation statistics, the adversarial transfer recipe, whether the device pipeline serves it, its transforms
by name, and its builder as "module:function" (dataset.py resolves the builder and the transforms)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from infra.errors import UserError

ADV_RECIPES = ("adv_cifar", "adv_svhn")  # the original's adversarial transfer recipes (script/train_downstream)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pre-training statistics; folder data reuses them
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Sizes:
    """Images per split as a run loads them: `train` is the training pool (an official training file less the
    `val` images held out of its end), `test` the test split (None: the dataset has none)."""
    train: int
    val: int
    test: int | None


@dataclass(frozen=True)
class Dataset:
    """One dataset. Transforms are names that dataset.py turns into torchvision's (and transfer/pipeline.py into
    its device versions, where `device`): train "crop_flip" = RandomResizedCrop(size) + flip, "visda_crop_flip" =
    the same with scale (0.75, 1.33); eval "resize_crop" = Resize(resize_size) + CenterCrop(size), "resize" =
    Resize(size), "squeeze" = Resize((size, size))."""
    builder: str                       # "module:function": (root, download) -> datafiles.formats.RawSplits
    num_classes: int | None            # None: whatever the folder holds
    mean: tuple[float, float, float]   # normalisation inside the model (images stay in [0, 1])
    std: tuple[float, float, float]
    sizes: Sizes | None                # None: counted from its folders where the campaign's estimate needs them
    adv_recipe: str | None             # one of ADV_RECIPES; None: no adversarial transfer (named in the error)
    device: bool = False               # the device pipeline serves it (one uint8 array on the GPU)
    train_transform: str = "crop_flip"
    eval_transform: str = "resize_crop"
    downstream: bool = True            # a transfer target (imagenet is IMP's pre-training data)

    def __post_init__(self) -> None:
        if ":" not in self.builder:
            raise ValueError(f"builder {self.builder!r}: expected 'module:function'")
        if self.adv_recipe is not None and self.adv_recipe not in ADV_RECIPES:
            raise ValueError(f"adv_recipe {self.adv_recipe!r}: expected one of {', '.join(ADV_RECIPES)} or None")


DATASETS: dict[str, Dataset] = {
    "imagenet": Dataset("datafiles.formats:imagenet", 1000, IMAGENET_MEAN, IMAGENET_STD, Sizes(1281167, 50000, None),
                        None, downstream=False),
    "cifar10": Dataset("datafiles.formats:cifar10", 10, CIFAR10_MEAN, CIFAR10_STD, Sizes(45000, 5000, 10000),
                       "adv_cifar", device=True),
    "cifar10_2": Dataset("datafiles.formats:cifar10_2", 10, CIFAR10_MEAN, CIFAR10_STD, Sizes(45000, 5000, 10000),
                         "adv_cifar", eval_transform="resize"),
    "cifar100": Dataset("datafiles.formats:cifar100", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                        Sizes(45000, 5000, 10000), "adv_cifar", device=True),
    "svhn": Dataset("datafiles.formats:svhn", 10, (0.4377, 0.4438, 0.4728), (0.1201, 0.1231, 0.1052),
                    Sizes(68257, 5000, 26032), "adv_svhn", device=True),
    "folder": Dataset("datafiles.formats:folder", None, IMAGENET_MEAN, IMAGENET_STD, None, "adv_cifar"),
    "visda": Dataset("datafiles.formats:visda", 12, IMAGENET_MEAN, IMAGENET_STD, None, "adv_cifar",
                     train_transform="visda_crop_flip", eval_transform="squeeze"),
}
# The original's cifar10_3 (32 px, RandomCrop(32, 4), a fresh random 3x3 stem replacing the pre-trained one, no
# max-pool) is not here: it changes the model, not only the data (see README, "Not supported").


def get(name: str, flag: str = "--dataset") -> Dataset:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} ({flag}): choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def downstream() -> tuple[str, ...]:
    """The transfer targets, in table order."""
    return tuple(name for name, d in DATASETS.items() if d.downstream)


def device_served() -> tuple[str, ...]:
    return tuple(name for name, d in DATASETS.items() if d.device)


def adv_recipe(name: str) -> str:
    """The adversarial transfer recipe of dataset `name`; one without is a UserError naming it."""
    recipe = get(name).adv_recipe
    if recipe is None:
        raise UserError(f"dataset {name!r} has no adversarial transfer recipe: set its adv_recipe in "
                        f"datafiles/facts.py to one of {', '.join(ADV_RECIPES)}, or transfer it with mode std only")
    return recipe


class Names(Sequence):
    """The downstream names, read from DATASETS at each use (flag choices see an entry added after import)."""

    def __getitem__(self, i):
        return downstream()[i]

    def __len__(self) -> int:
        return len(downstream())

    def __repr__(self) -> str:
        return repr(downstream())


DOWNSTREAM = Names()
