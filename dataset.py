"""The datasets of the table in datafiles/facts.py (ImageNet folder, CIFAR-10/100, SVHN, any ImageFolder, and the
original's cifar10_2 and visda variants) loaded with the original's splits, data-limited training subsets, and each
dataset's [0, 1] transforms (normalisation lives inside the model).

    splits = build_datasets("cifar10", "../data", DataFraction(data_number=0.1), image_size=224, resize_size=256)
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from datafiles import facts, formats
from datafiles.facts import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (the pre-training statistics, used widely)
from infra.checkpoint import atomic_write_json
from infra.errors import DataError, UserError, node_error
from infra.reproducibility import subset_generator

SUBSETS = ("first", "balanced")


# ---------------------------------------------------------------------------- transforms
def make_train_transform(image_size: int = 224) -> Callable:
    return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor()])


def make_eval_transform(image_size: int = 224, resize_size: int = 256) -> Callable:
    return T.Compose([T.Resize(resize_size), T.CenterCrop(image_size), T.ToTensor()])


def resize_only_eval(image_size: int = 224, resize_size: int = 256) -> Callable:
    """The original's cifar10_2: Resize(image_size), no crop (`resize_size` does not apply)."""
    return T.Compose([T.Resize(image_size), T.ToTensor()])


def visda_train(image_size: int = 224) -> Callable:
    """The original's visda: RandomResizedCrop with scale (0.75, 1.33) of the image area, then a flip."""
    return T.Compose([T.RandomResizedCrop(image_size, scale=(0.75, 1.33)), T.RandomHorizontalFlip(), T.ToTensor()])


def visda_eval(image_size: int = 224, resize_size: int = 256) -> Callable:
    """The original's visda: the whole image squeezed to image_size x image_size (`resize_size` does not apply)."""
    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor()])


class SplitView(Dataset):
    """The images `indices` of `dataset` (which yields PIL images) seen through this split's `transform`.

    The transform lives here rather than in the base dataset so that train and val can share one loaded
    CIFAR/SVHN training file with different transforms.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable) -> None:
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        try:
            image, target = self.dataset[self.indices[i]]
        except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for a truncated or broken image file
            if not hasattr(self.dataset, "samples"):
                raise
            path = self.dataset.samples[self.indices[i]][0]
            raise node_error(path, e, "reading") or unreadable_image(path, self.dataset.root, e) from None
        return self.transform(image), int(target)

    @property
    def targets(self) -> list[int]:
        all_targets = targets_of(self.dataset)
        return [all_targets[i] for i in self.indices]


def unreadable_image(path: str, split_root: str, e: BaseException) -> DataError:
    """One line naming the file and what to do (ImageFolder decodes images lazily, deep inside a run)."""
    why = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
    data = os.path.dirname(os.path.normpath(split_root))
    return DataError(f"image {path} cannot be decoded ({why}): fix or remove it and re-run the same command (the run "
                     f"resumes from its last checkpoint); `python sweep.py check-data {data}` lists every bad file")


def targets_of(dataset: Dataset) -> list[int]:
    """Labels of a torchvision dataset without decoding images (SVHN calls them `labels`)."""
    labels = dataset.targets if hasattr(dataset, "targets") else dataset.labels
    return [int(t) for t in labels]


# ---------------------------------------------------------------------------- splits and subsets
def balanced_subset(targets: Sequence[int], pool: Sequence[int], k: int, seed: int) -> list[int]:
    """`k` indices drawn from `pool` (indices into `targets`) with class counts as equal as the pool allows.

    Every class gets k // C images, the remainder goes to classes in a seeded random order, and a class
    with too few images gives its share to the others; within a class the images are drawn at random.
    Same seed, same subset. Returned sorted.
    """
    pool = list(pool)
    if not 0 < k <= len(pool):
        raise ValueError(f"cannot draw {k} of {len(pool)} images")
    by_class: dict[int, list[int]] = {}
    for i in pool:
        by_class.setdefault(int(targets[i]), []).append(i)
    classes = sorted(by_class)
    g = subset_generator(seed)
    order = [classes[j] for j in torch.randperm(len(classes), generator=g).tolist()]
    shuffled = {c: [by_class[c][j] for j in torch.randperm(len(by_class[c]), generator=g).tolist()]
                for c in classes}
    take, left = dict.fromkeys(classes, 0), k
    while left:  # each pass either places everything or exhausts at least one class
        open_classes = [c for c in order if take[c] < len(by_class[c])]
        share, extra = divmod(left, len(open_classes))
        for rank, c in enumerate(open_classes):
            add = min(share + (rank < extra), len(by_class[c]) - take[c])
            take[c] += add
            left -= add
    return sorted(i for c in classes for i in shuffled[c][:take[c]])


def choose_train(targets: Sequence[int], pool: Sequence[int], data_number: float, subset: str,
                 seed: int) -> list[int]:
    """The training images kept for data-limited transfer: `max(1, int(len(pool) * data_number))` of them,
    the first ones of the pool (as the original's `int(45000 * data_rate)`) or a seeded class-balanced draw."""
    k = max(1, int(len(pool) * data_number))
    if subset == "first":
        return list(pool[:k])
    return balanced_subset(targets, pool, k, seed)


def write_indices(path: str, indices: Sequence[int]) -> None:
    """Record which images of the original training file were trained on (a JSON list, written atomically)."""
    atomic_write_json(path, [int(i) for i in indices])


# ---------------------------------------------------------------------------- the table's names
# the transforms the dataset table (datafiles/facts.py) names: train (image_size), eval (image_size, resize_size)
TRAIN_TRANSFORMS: dict[str, Callable[[int], Callable]] = {"crop_flip": make_train_transform,
                                                          "visda_crop_flip": visda_train}
EVAL_TRANSFORMS: dict[str, Callable[[int, int], Callable]] = {"resize_crop": make_eval_transform,
                                                              "resize": resize_only_eval, "squeeze": visda_eval}


def builder(name: str) -> Callable[[str, bool], formats.RawSplits]:
    """The builder the table names for dataset `name` ("module:function"), imported on first use."""
    where = facts.get(name).builder
    module, _, attr = where.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"dataset {name!r}: its builder {where!r} (datafiles/facts.py) cannot be loaded "
                        f"({e})") from None


def transform(name: str, kind: str) -> Callable:
    """The maker of dataset `name`'s `kind` ("train" or "eval") transform, by the name the table gives."""
    spec = facts.get(name)
    chosen, known = (spec.train_transform, TRAIN_TRANSFORMS) if kind == "train" else \
        (spec.eval_transform, EVAL_TRANSFORMS)
    if chosen not in known:
        raise UserError(f"dataset {name!r}: its {kind}_transform {chosen!r} (datafiles/facts.py) is not one of "
                        f"dataset.py's {', '.join(known)}")
    return known[chosen]


@dataclass(frozen=True)
class Splits:
    train: SplitView
    val: SplitView
    test: SplitView | None
    num_classes: int  # classes found in the data (an ImageNet-layout subset may hold fewer than 1000)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_indices: list[int]  # indices into the original training file, for `write_indices`


@dataclass(frozen=True)
class DataFraction:
    """Which training images a run keeps: `data_number` of the training split (a fraction in (0, 1]), the first
    ones or a class-balanced draw seeded by `seed` (`subset`, one of SUBSETS)."""
    data_number: float = 1.0
    subset: str = "first"
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.data_number <= 1:
            raise UserError(f"--data_number must be in (0, 1] (a fraction of the training split), got "
                            f"{self.data_number}")
        if self.subset not in SUBSETS:
            raise UserError(f"--subset must be one of {', '.join(SUBSETS)}, got {self.subset!r}")


def build_datasets(name: str, root: str, fraction: DataFraction = DataFraction(), *, image_size: int = 224,
                   resize_size: int = 256, download: bool = False, train_transform: Callable | None = None,
                   eval_transform: Callable | None = None) -> Splits:
    """Load dataset `name` from `root` into train/val/test splits, the training split cut to `fraction`, with
    its transforms (unless given); val and test use the eval transform."""
    spec = facts.get(name)
    raw = builder(name)(root, download)
    chosen = choose_train(targets_of(raw.train), raw.train_pool, fraction.data_number, fraction.subset,
                          fraction.seed)
    train_tf = train_transform or transform(name, "train")(image_size)
    eval_tf = eval_transform or transform(name, "eval")(image_size, resize_size)
    test = None if raw.test is None else SplitView(raw.test, range(len(raw.test)), eval_tf)
    return Splits(SplitView(raw.train, chosen, train_tf), SplitView(raw.val, raw.val_indices, eval_tf), test,
                  raw.num_classes, tuple(spec.mean), tuple(spec.std), chosen)
