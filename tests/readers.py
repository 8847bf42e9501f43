"""Official-format CIFAR and SVHN files decoded without torchvision, for exact comparisons with what the loaders read."""
from __future__ import annotations

import os
import pickle
from typing import Sequence

import numpy as np


def read_cifar_images(root: str, files: Sequence[str], folder: str) -> tuple[np.ndarray, list[int]]:
    """Decode official-format CIFAR pickles without torchvision (for exact comparisons in tests)."""
    rows, labels = [], []
    for name in files:
        with open(os.path.join(root, folder, name), "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        rows.append(entry["data"])
        labels += entry["labels"] if "labels" in entry else entry["fine_labels"]
    return np.vstack(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_svhn(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3), raw labels 1..10 as stored) read with scipy, not torchvision."""
    import scipy.io

    mat = scipy.io.loadmat(os.path.join(root, f"{split}_32x32.mat"))
    return mat["X"].transpose(3, 0, 1, 2), mat["y"].squeeze(1)
