"""Small datasets fabricated in the true on-disk formats (CIFAR python pickles, SVHN .mat, ImageFolder PNGs), so
that tests, benchmarks and GPU checks load them through torchvision's real readers, offline.

Images are class-dependent (a per-class colour plus noise), so a small model can learn them. Labels cycle
through all classes (every class appears once there are at least as many images as classes), shuffled.
torchvision checks the MD5 of the official files: `allow_fake_checksums(monkeypatch)` turns those checks
into existence checks (torchvision's `check_integrity(path, md5=None)`), leaving the loaders untouched.
"""
from __future__ import annotations

import os
import pickle
from typing import Sequence

import numpy as np


def class_images(labels: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 images (N, size, size, 3): the colour of the label's class blended with noise."""
    n_colours = max(256, int(labels.max()) + 1)  # fixed size: a class keeps its colour in every file
    palette = np.random.default_rng(1234).integers(0, 256, size=(n_colours, 3))
    noise = rng.integers(0, 256, size=(len(labels), size, size, 3))
    return (0.6 * palette[labels][:, None, None, :] + 0.4 * noise).astype(np.uint8)


def cycled_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


# ---------------------------------------------------------------------------- CIFAR
def _write_pickle(path: str, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) rows laid out as the official files: all red, then green, then blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)




def make_cifar10(root: str, n_train: int = 60, n_test: int = 20, seed: int = 0) -> str:
    """Write root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns root."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    labels = cycled_labels(n_train, 10, rng)
    images = _cifar_rows(class_images(labels, rng))
    for b, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _write_pickle(os.path.join(folder, f"data_batch_{b}"), {
            "batch_label": f"training batch {b} of 5", "labels": labels[part].tolist(), "data": images[part],
            "filenames": [f"train_{i}.png" for i in part]})
    labels = cycled_labels(n_test, 10, rng)
    _write_pickle(os.path.join(folder, "test_batch"), {
        "batch_label": "testing batch 1 of 1", "labels": labels.tolist(),
        "data": _cifar_rows(class_images(labels, rng)), "filenames": [f"test_{i}.png" for i in range(n_test)]})
    _write_pickle(os.path.join(folder, "batches.meta"), {
        "num_cases_per_batch": 10000, "num_vis": 3072,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]})
    return str(root)


def make_cifar100(root: str, n_train: int = 60, n_test: int = 20, seed: int = 0) -> str:
    """Write root/cifar-100-python/{train, test, meta}; returns root."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = cycled_labels(n, 100, rng)
        _write_pickle(os.path.join(folder, split), {
            "filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch 1 of 1",
            "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
            "data": _cifar_rows(class_images(fine, rng))})
    _write_pickle(os.path.join(folder, "meta"), {
        "fine_label_names": [f"fine_{i}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    return str(root)


# ---------------------------------------------------------------------------- SVHN
def make_svhn(root: str, n_train: int = 60, n_test: int = 20, seed: int = 0) -> str:
    """Write root/train_32x32.mat and root/test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 for digit 0."""
    import scipy.io

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        digits = cycled_labels(n, 10, rng)
        x = class_images(digits, rng).transpose(1, 2, 3, 0)
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        scipy.io.savemat(os.path.join(root, f"{split}_32x32.mat"), {"X": x, "y": y})
    return str(root)




# ---------------------------------------------------------------------------- ImageFolder
def make_image_folder(root: str, classes: Sequence[str] = ("ant", "bee", "cat"), n_per_class: int = 4,
                      splits: Sequence[str] = ("train", "val"), size: int = 32, seed: int = 0) -> str:
    """Write root/<split>/<class>/<i>.png for every split; returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        labels = np.repeat(np.arange(len(classes)), n_per_class)
        for i, (label, image) in enumerate(zip(labels, class_images(labels, rng, size))):
            folder = os.path.join(root, split, classes[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))
    return str(root)


# ---------------------------------------------------------------------------- checksums
def allow_fake_checksums(monkeypatch=None) -> None:
    """Make torchvision's CIFAR/SVHN accept fabricated files: md5=None means 'the file exists'. With pytest's
    `monkeypatch` the change is undone after the test; without it, it holds for the rest of the process."""
    from torchvision.datasets import CIFAR10, CIFAR100, SVHN

    patch = monkeypatch.setattr if monkeypatch is not None else setattr

    for cls in (CIFAR10, CIFAR100):
        patch(cls, "train_list", [[f, None] for f, _ in cls.train_list])
        patch(cls, "test_list", [[f, None] for f, _ in cls.test_list])
        patch(cls, "meta", {**cls.meta, "md5": None})
    patch(SVHN, "split_list", {k: [url, f, None] for k, (url, f, _) in SVHN.split_list.items()})
