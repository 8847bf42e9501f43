"""One table of datasets (ImageNet folder, CIFAR-10/100, SVHN, any ImageFolder, and the original's cifar10_2 and
visda variants) with the PROTOCOL splits, data-limited training subsets, and each dataset's [0, 1] transforms
(normalisation lives inside the model).

    splits = build_datasets("cifar10", "../data", data_number=0.1, image_size=224, resize_size=256)
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T

from checkpoint import atomic_write_json
from errors import DataError, UserError

SUBSETS = ("first", "balanced")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pre-training statistics; folder data reuses them
IMAGENET_STD = (0.229, 0.224, 0.225)
VAL_SIZE = 5000  # images held out of the official training file for validation (CIFAR and SVHN)


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
            raise unreadable_image(self.dataset.samples[self.indices[i]][0], self.dataset.root, e) from None
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
def train_val_split(n: int, official_n: int, val_size: int = VAL_SIZE) -> tuple[range, range]:
    """Split a training file of `n` images into (train, val) index ranges: the last images are validation.

    With the official file (`n >= official_n`) the last `val_size` images are held out, which gives
    exactly the PROTOCOL splits (CIFAR 0..44999 / 45000..49999, SVHN 0..68256 / 68257..73256). A smaller
    file (e.g. fabricated test data) holds out the same fraction, `max(1, round(n * val_size / official_n))`.
    """
    n_val = val_size if n >= official_n else max(1, round(n * val_size / official_n))
    if n - n_val < 1:
        raise DataError(f"a training file of {n} images is too small to hold out a validation split")
    return range(0, n - n_val), range(n - n_val, n)


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
    g = torch.Generator().manual_seed(seed)
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


# ---------------------------------------------------------------------------- loaders, one per format
@dataclass(frozen=True)
class RawSplits:
    """What a builder loads: untransformed datasets and which of their images form each split."""
    train: Dataset
    train_pool: Sequence[int]
    val: Dataset
    val_indices: Sequence[int]
    test: Dataset | None
    num_classes: int


def _open_torchvision(make: Callable[[], Dataset], name: str, path: str, layout: str) -> Dataset:
    from scipy.io.matlab import MatReadError
    try:
        return make()
    except RuntimeError as e:
        if "not found or corrupted" not in str(e):
            raise
        raise DataError(f"{name} data in {path} failed torchvision's MD5 check: expected {layout}. "
                        "Delete the files and pass --download to fetch them again") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError, MatReadError) as e:
        raise DataError(f"{name} data in {path} is malformed ({type(e).__name__}: {str(e)[:80]}): "
                        f"expected {layout}") from None


def _check_files(name: str, root: str, folder: str, files: Sequence[str], layout: str) -> None:
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(f"{name} data not found in {root}: expected {layout} (missing {missing[0]}). "
                        "Pass --download to fetch it, or --data DIR")


def _cifar(name: str, cls: type[tvd.CIFAR10]) -> Callable[[str, bool], RawSplits]:
    def build(root: str, download: bool) -> RawSplits:
        folder = os.path.join(root, cls.base_folder)
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        layout = f"{folder}{os.sep} (the official python pickles: {', '.join(files)})"
        if not download:
            _check_files(name, root, folder, files, layout)
        train = _open_torchvision(lambda: cls(root, train=True, download=download), name, folder, layout)
        test = _open_torchvision(lambda: cls(root, train=False), name, folder, layout)
        pool, val = train_val_split(len(train), official_n=50000)
        return RawSplits(train, pool, train, val, test, len(train.classes))
    return build


def _svhn(root: str, download: bool) -> RawSplits:
    files = [tvd.SVHN.split_list[s][1] for s in ("train", "test")]
    layout = f"{os.path.join(root, files[0])} and {os.path.join(root, files[1])} (the official .mat files)"
    if not download:
        _check_files("svhn", root, root, files, layout)
    train = _open_torchvision(lambda: tvd.SVHN(root, split="train", download=download), "svhn", root, layout)
    test = _open_torchvision(lambda: tvd.SVHN(root, split="test", download=download), "svhn", root, layout)
    pool, val = train_val_split(len(train), official_n=73257)
    return RawSplits(train, pool, train, val, test, 10)


def _image_folder(name: str, path: str, layout: str) -> tvd.ImageFolder:
    if not os.path.isdir(path):
        root = os.path.dirname(path)
        hint = f"{root} looks like one split: pass its parent folder" \
            if os.path.isdir(root) and os.path.basename(os.path.normpath(root)) in ("train", "val", "test") \
            else "Folder datasets are never downloaded: pass the folder that holds train/ (--data, or DIR for IMP)"
        raise DataError(f"{name} data not found: {path} is not a folder; expected {layout}. {hint}")
    try:
        return tvd.ImageFolder(path)
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise DataError(f"{name} data in {path} is malformed ({e}): expected {layout}") from None


def _same_classes(name: str, train: tvd.ImageFolder, other: tvd.ImageFolder) -> None:
    odd = sorted(set(train.classes) ^ set(other.classes))
    if odd:
        raise DataError(f"{name} class folders of {other.root} differ from those of {train.root} "
                        f"(e.g. {odd[0]!r}): every split needs the same class folders")


def _imagenet(root: str, download: bool) -> RawSplits:
    layout = f"{root}/train/<class>/<image> and {root}/val/<class>/<image> (ImageFolder layout)"
    train = _image_folder("imagenet", os.path.join(root, "train"), layout)
    val = _image_folder("imagenet", os.path.join(root, "val"), layout)
    _same_classes("imagenet", train, val)
    return RawSplits(train, range(len(train)), val, range(len(val)), None, len(train.classes))


def _folder(root: str, download: bool) -> RawSplits:
    """root/train plus root/val and/or root/test; when only one of val/test exists it serves as both."""
    layout = f"{root}/train/<class>/<image> and {root}/val/ and/or {root}/test/ with the same class folders"
    train = _image_folder("folder", os.path.join(root, "train"), layout)
    found = {s: _image_folder("folder", os.path.join(root, s), layout)
             for s in ("val", "test") if os.path.isdir(os.path.join(root, s))}
    if not found:
        raise DataError(f"folder data in {root} has no val/ or test/ folder: expected {layout}")
    for other in found.values():
        _same_classes("folder", train, other)
    val = found.get("val", found.get("test"))
    test = found.get("test", val)
    return RawSplits(train, range(len(train)), val, range(len(val)), test, len(train.classes))


def _visda(root: str, download: bool) -> RawSplits:
    """VisDA-2017 classification as the original uses it: root/train (synthetic) for training, root/validation
    (real) for validation and, as in the original, also as the test set (the official test labels are withheld)."""
    layout = f"{root}/train/<class>/<image> and {root}/validation/<class>/<image> (VisDA-2017 classification)"
    train = _image_folder("visda", os.path.join(root, "train"), layout)
    val = _image_folder("visda", os.path.join(root, "validation"), layout)
    _same_classes("visda", train, val)
    return RawSplits(train, range(len(train)), val, range(len(val)), val, len(train.classes))


# ---------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class DatasetSpec:
    builder: Callable[[str, bool], RawSplits]  # (root, download) -> RawSplits
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int | None  # None: whatever the folder holds
    train_transform: Callable[[int], Callable] = make_train_transform          # (image_size) -> transform
    eval_transform: Callable[[int, int], Callable] = make_eval_transform       # (image_size, resize_size)


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


DATASETS: dict[str, DatasetSpec] = {
    "imagenet": DatasetSpec(_imagenet, IMAGENET_MEAN, IMAGENET_STD, 1000),
    "cifar10": DatasetSpec(_cifar("cifar10", tvd.CIFAR10), CIFAR10_MEAN, CIFAR10_STD, 10),
    "cifar10_2": DatasetSpec(_cifar("cifar10_2", tvd.CIFAR10), CIFAR10_MEAN, CIFAR10_STD, 10,
                             eval_transform=resize_only_eval),
    "cifar100": DatasetSpec(_cifar("cifar100", tvd.CIFAR100), (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                            100),
    "svhn": DatasetSpec(_svhn, (0.4377, 0.4438, 0.4728), (0.1201, 0.1231, 0.1052), 10),
    "folder": DatasetSpec(_folder, IMAGENET_MEAN, IMAGENET_STD, None),
    "visda": DatasetSpec(_visda, IMAGENET_MEAN, IMAGENET_STD, 12, train_transform=visda_train,
                         eval_transform=visda_eval),
}
# The original's cifar10_3 (32 px, RandomCrop(32, 4), a fresh random 3x3 stem replacing the pre-trained one, no
# max-pool) is not here: it changes the model, not only the data (see README, "Not supported").


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} (--dataset): choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


@dataclass(frozen=True)
class Splits:
    train: SplitView
    val: SplitView
    test: SplitView | None
    num_classes: int  # classes found in the data (an ImageNet-layout subset may hold fewer than 1000)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_indices: list[int]  # indices into the original training file, for `write_indices`


def build_datasets(name: str, root: str, *, data_number: float = 1.0, subset: str = "first", seed: int = 1,
                   image_size: int = 224, resize_size: int = 256, download: bool = False,
                   train_transform: Callable | None = None, eval_transform: Callable | None = None) -> Splits:
    """Load dataset `name` from `root` into train/val/test splits with its transforms (unless given); val and
    test use the eval transform."""
    spec = get_spec(name)
    if not 0 < data_number <= 1:
        raise UserError(f"--data_number must be in (0, 1] (a fraction of the training split), got {data_number}")
    if subset not in SUBSETS:
        raise UserError(f"--subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    raw = spec.builder(root, download)
    chosen = choose_train(targets_of(raw.train), raw.train_pool, data_number, subset, seed)
    train_tf = train_transform or spec.train_transform(image_size)
    eval_tf = eval_transform or spec.eval_transform(image_size, resize_size)
    test = None if raw.test is None else SplitView(raw.test, range(len(raw.test)), eval_tf)
    return Splits(SplitView(raw.train, chosen, train_tf), SplitView(raw.val, raw.val_indices, eval_tf), test,
                  raw.num_classes, tuple(spec.mean), tuple(spec.std), chosen)
