"""Seeding and RNG state capture/restore, so a resumed run replays exactly what an uninterrupted one does: every
seed a run derives from `--seed` (each epoch's loader order and global RNG, the device crops, random pruning,
the balanced data subset) is derived here, each a pure function of its inputs."""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
from typing import Iterator

import numpy as np
import torch


# cuBLAS is deterministic only with a fixed workspace; read when the process creates its first cuBLAS handle
CUBLAS_WORKSPACE = ":4096:8"


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def kernel_mode(*, deterministic: bool, tf32: bool = True) -> Iterator[None]:
    """For the duration of a run: deterministic kernels (`--deterministic`: torch's deterministic algorithms, a
    fixed cuBLAS workspace unless CUBLAS_WORKSPACE_CONFIG is set (enter this before the first CUDA matmul), cuDNN
    without autotuning) or cuDNN's autotuner, and cuDNN's TF32 for fp32 convolutions on or off (`--tf32`); the
    process's previous settings come back afterwards. Ops without a deterministic kernel still run, and PyTorch
    names each in a warning: they are what `--deterministic` does not cover."""
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = not deterministic, deterministic, tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = before[2:]


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The generator that orders (and seeds the workers of) one epoch's loader: a pure function of its inputs."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNG's seed for one epoch on one rank (augmentation in workers aside: PGD random starts,
    dropout): a pure function of the three, and independent of the loader's order generator, so the data order
    and the attack's noise are not drawn from one stream."""
    return int.from_bytes(hashlib.sha256(f"imp/{seed}/{epoch}/{rank}".encode()).digest()[:7], "big")


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch for one epoch on one rank (`epoch_seed`)."""
    seed_all(epoch_seed(seed, epoch, rank))


def augment_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the device pipeline's crop and flip generator for one epoch on one rank: drawn from
    `epoch_generator(seed, epoch, rank)` (a pure function of the three) rather than its own seed, so the crops
    are not the same random stream as the epoch's global seed (PGD's random starts) or its order."""
    return int(torch.randint(2**62, (1,), generator=epoch_generator(seed, epoch, rank)))


def level_generator(seed: int, level: int) -> torch.Generator:
    """The generator of random pruning at one IMP level: the mask is a pure function of (seed, level)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + level)


def subset_generator(seed: int) -> torch.Generator:
    """The generator of the class-balanced training subset: same seed, same subset."""
    return torch.Generator().manual_seed(seed)


def get_rng_state() -> dict:
    """Plain-tensor RNG states (loadable with weights_only=True)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
