"""The on-disk formats the dataset table (datafiles/facts.py) names, one builder each: CIFAR/SVHN files through
torchvision, and ImageFolder trees (ImageNet, folder, VisDA). A builder returns untransformed `RawSplits`, the
original's split of an official training file included; a missing or malformed file is one DataError line naming it."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Callable, Sequence

from torch.utils.data import Dataset
from torchvision import datasets as tvd

from infra.checkpoint import exists
from infra.errors import DataError, node_error

VAL_SIZE = 5000  # images held out of the official training file for validation (CIFAR and SVHN)


def train_val_split(n: int, official_n: int, val_size: int = VAL_SIZE) -> tuple[range, range]:
    """Split a training file of `n` images into (train, val) index ranges: the last images are validation.

    With the official file (`n >= official_n`) the last `val_size` images are held out, which gives
    exactly the original's splits (CIFAR 0..44999 / 45000..49999, SVHN 0..68256 / 68257..73256). A smaller
    file (e.g. fabricated test data) holds out the same fraction, `max(1, round(n * val_size / official_n))`.
    """
    n_val = val_size if n >= official_n else max(1, round(n * val_size / official_n))
    if n - n_val < 1:
        raise DataError(f"a training file of {n} images is too small to hold out a validation split")
    return range(0, n - n_val), range(n - n_val, n)


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
    except OSError as e:  # a stale handle, an I/O error: the machine's; anything else: the files'
        raise node_error(path, e, "reading") or DataError(f"{name} data in {path} cannot be read ({e}): expected "
                                                           f"{layout}") from None
    except RuntimeError as e:
        if "not found or corrupted" not in str(e):
            raise
        raise DataError(f"{name} data in {path} failed torchvision's MD5 check: expected {layout}. "
                        "Delete the files and pass --download to fetch them again") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError, MatReadError) as e:
        raise DataError(f"{name} data in {path} is malformed ({type(e).__name__}: {str(e)[:80]}): "
                        f"expected {layout}") from None


def _check_files(name: str, root: str, folder: str, files: Sequence[str], layout: str) -> None:
    missing = [f for f in files if not exists(os.path.join(folder, f))]
    if missing:
        raise DataError(f"{name} data not found in {root}: expected {layout} (missing {missing[0]}). "
                        "Pass --download to fetch it, or --data DIR")


def cifar(name: str, cls: type[tvd.CIFAR10]) -> Callable[[str, bool], RawSplits]:
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


cifar10, cifar10_2 = cifar("cifar10", tvd.CIFAR10), cifar("cifar10_2", tvd.CIFAR10)
cifar100 = cifar("cifar100", tvd.CIFAR100)


def svhn(root: str, download: bool) -> RawSplits:
    files = [tvd.SVHN.split_list[s][1] for s in ("train", "test")]
    layout = f"{os.path.join(root, files[0])} and {os.path.join(root, files[1])} (the official .mat files)"
    if not download:
        _check_files("svhn", root, root, files, layout)
    train = _open_torchvision(lambda: tvd.SVHN(root, split="train", download=download), "svhn", root, layout)
    test = _open_torchvision(lambda: tvd.SVHN(root, split="test", download=download), "svhn", root, layout)
    pool, val = train_val_split(len(train), official_n=73257)
    return RawSplits(train, pool, train, val, test, 10)


def _image_folder(name: str, path: str, layout: str) -> tvd.ImageFolder:
    if not exists(path, "dir"):
        root = os.path.dirname(path)
        hint = f"{root} looks like one split: pass its parent folder" \
            if exists(root, "dir") and os.path.basename(os.path.normpath(root)) in ("train", "val", "test") \
            else "Folder datasets are never downloaded: pass the folder that holds train/ (--data, or DIR for IMP)"
        raise DataError(f"{name} data not found: {path} is not a folder; expected {layout}. {hint}")
    try:
        return tvd.ImageFolder(path)
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise DataError(f"{name} data in {path} is malformed ({e}): expected {layout}") from None
    except OSError as e:  # listing the folder failed: a stale handle, an I/O error (the machine's), a permission
        raise node_error(path, e, "reading") or DataError(f"{name} data in {path} cannot be listed ({e})") from None


def _same_classes(name: str, train: tvd.ImageFolder, other: tvd.ImageFolder) -> None:
    odd = sorted(set(train.classes) ^ set(other.classes))
    if odd:
        raise DataError(f"{name} class folders of {other.root} differ from those of {train.root} "
                        f"(e.g. {odd[0]!r}): every split needs the same class folders")


def imagenet(root: str, download: bool) -> RawSplits:
    layout = f"{root}/train/<class>/<image> and {root}/val/<class>/<image> (ImageFolder layout)"
    train = _image_folder("imagenet", os.path.join(root, "train"), layout)
    val = _image_folder("imagenet", os.path.join(root, "val"), layout)
    _same_classes("imagenet", train, val)
    return RawSplits(train, range(len(train)), val, range(len(val)), None, len(train.classes))


def folder(root: str, download: bool) -> RawSplits:
    """root/train plus root/val and/or root/test; when only one of val/test exists it serves as both."""
    layout = f"{root}/train/<class>/<image> and {root}/val/ and/or {root}/test/ with the same class folders"
    train = _image_folder("folder", os.path.join(root, "train"), layout)
    found = {s: _image_folder("folder", os.path.join(root, s), layout)
             for s in ("val", "test") if exists(os.path.join(root, s), "dir")}
    if not found:
        raise DataError(f"folder data in {root} has no val/ or test/ folder: expected {layout}")
    for other in found.values():
        _same_classes("folder", train, other)
    val = found.get("val", found.get("test"))
    test = found.get("test", val)
    return RawSplits(train, range(len(train)), val, range(len(val)), test, len(train.classes))


def visda(root: str, download: bool) -> RawSplits:
    """VisDA-2017 classification as the original uses it: root/train (synthetic) for training, root/validation
    (real) for validation and, as in the original, also as the test set (the official test labels are withheld)."""
    layout = f"{root}/train/<class>/<image> and {root}/validation/<class>/<image> (VisDA-2017 classification)"
    train = _image_folder("visda", os.path.join(root, "train"), layout)
    val = _image_folder("visda", os.path.join(root, "validation"), layout)
    _same_classes("visda", train, val)
    return RawSplits(train, range(len(train)), val, range(len(val)), val, len(train.classes))
